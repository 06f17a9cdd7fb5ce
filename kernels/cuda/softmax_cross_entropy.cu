// Fused softmax-cross-entropy, forward and backward, one thread per row of the logits.
//
// REAL is float or double (compiled with -DREAL=float / -DREAL=double); the sums are in double.
// Loss of row i, with class weights w (has_weight) and label smoothing eps:
//   l_i = -sum_c w_c q_ic log p_ic,  q_ic = (1 - eps) [c == y_i] + eps / C
// Gradient with respect to the logits, for the cotangent g_i of l_i:
//   dz_ic = g_i (s_i p_ic - w_c q_ic),  s_i = sum_c w_c q_ic
#ifndef REAL
#define REAL float
#endif

__device__ void row_log_normalizer(const REAL* row, int classes, double* max_out,
                                   double* log_total_out) {
    double m = row[0];
    for (int c = 1; c < classes; ++c) m = fmax(m, (double)row[c]);
    double total = 0.0;
    for (int c = 0; c < classes; ++c) total += exp((double)row[c] - m);
    *max_out = m;
    *log_total_out = log(total);
}

extern "C" __global__ void softmax_cross_entropy_forward(
        const REAL* logits, const long long* target, const REAL* weight, int has_weight,
        double eps, int rows, int classes, REAL* loss) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    const REAL* row = logits + (long long)i * classes;
    double m, log_total;
    row_log_normalizer(row, classes, &m, &log_total);
    long long t = target[i];
    double w_t = has_weight ? (double)weight[t] : 1.0;
    double value = -w_t * ((double)row[t] - m - log_total);
    if (eps != 0.0) {
        double smooth = 0.0;
        for (int c = 0; c < classes; ++c) {
            double w_c = has_weight ? (double)weight[c] : 1.0;
            smooth += w_c * ((double)row[c] - m - log_total);
        }
        value = (1.0 - eps) * value - eps * smooth / classes;
    }
    loss[i] = (REAL)value;
}

extern "C" __global__ void softmax_cross_entropy_backward(
        const REAL* logits, const long long* target, const REAL* weight, int has_weight,
        double eps, const REAL* g, int rows, int classes, REAL* grad) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    const REAL* row = logits + (long long)i * classes;
    double m, log_total;
    row_log_normalizer(row, classes, &m, &log_total);
    double weight_total = 0.0;
    for (int c = 0; c < classes; ++c) weight_total += has_weight ? (double)weight[c] : 1.0;
    long long t = target[i];
    double w_t = has_weight ? (double)weight[t] : 1.0;
    double s = (1.0 - eps) * w_t + eps / classes * weight_total;
    for (int c = 0; c < classes; ++c) {
        double w_c = has_weight ? (double)weight[c] : 1.0;
        double q = eps / classes + (c == t ? 1.0 - eps : 0.0);
        double p = exp((double)row[c] - m - log_total);
        grad[(long long)i * classes + c] = (REAL)((double)g[i] * (s * p - w_c * q));
    }
}
