"""Hyperband on a plain function, with intermediate reports and median pruning.

    python examples/hyperband_function.py

The "training run" is a toy learning curve: accuracy rises with the budget (epochs) towards a
ceiling that depends on the learning rate and the width. Each epoch is reported with
``trial.report``; ``trial.should_stop()`` lets the median rule end hopeless runs early.
"""
import math

from scipy.stats import loguniform

from refnas.search import MedianPruner, optimize


def train(params: dict, budget: float, trial) -> float:
    ceiling = 0.98 - 0.08 * abs(math.log10(params["lr"]) + 2.5) - 0.02 * (params["width"] == 16)
    accuracy = 0.1
    for epoch in range(int(budget)):
        accuracy = ceiling - (ceiling - 0.1) * math.exp(-0.3 * (epoch + 1))
        trial.report(accuracy, epoch)
        if trial.should_stop():
            break
    return accuracy


if __name__ == "__main__":
    space = {"lr": loguniform(1e-4, 1e-1), "width": [16, 64, 256]}
    result = optimize(train, space, "hyperband", min_resource=1, max_resource=27,
                      random_state=0, pruner=MedianPruner(n_startup_trials=3))
    best = result.best_trial
    print(f"{len(result.trials)} trials; best {best.value:.4f} at budget {best.budget:g} with "
          f"{best.params}")
    states = {s: sum(t.state == s for t in result.trials) for s in ("complete", "pruned")}
    print("states:", states)
