"""The seed example: a randomized search over a random forest on the bundled digits, written
exactly as with scikit-learn — only the import changes.

    python examples/random_forest_digits.py

The grid has 3 * 3 * 2 * 2 = 36 points, fewer than n_iter=100, so (as scikit-learn does) the
search warns and runs the whole grid: 36 candidates x 5 folds = 180 small fits.
"""
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier

from refnas.search import RandomizedSearchCV

X, y = load_digits(return_X_y=True)

param_grid = {
    "n_estimators": [10, 20, 50],
    "max_depth": [None, 5, 10],
    "min_samples_split": [2, 5],
    "max_features": ["sqrt", "log2"],
}

if __name__ == "__main__":
    rf_random = RandomizedSearchCV(estimator=RandomForestClassifier(),
                                   param_distributions=param_grid, n_iter=100, cv=5, verbose=2,
                                   random_state=42)
    rf_random.fit(X, y)

    best_model = rf_random.best_estimator_
    print("best parameters:", rf_random.best_params_)
    print(f"best cross-validated accuracy: {rf_random.best_score_:.4f}")
    print("refit on all data:", best_model)
