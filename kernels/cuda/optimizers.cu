// In-place optimizer updates, one thread per parameter element (grid-stride loop).
//
// REAL is float or double (compiled with -DREAL=float / -DREAL=double).
// SGD (PyTorch's rule): g = grad + wd * p; with momentum mu: b = g on the first step, else
// b = mu b + (1 - dampening) g; g = g + mu b (Nesterov) or b; p -= lr g.
// Adam / AdamW (decoupled): p *= 1 - lr wd (AdamW) or g += wd p (Adam);
// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr (m / bias1) / (sqrt(v / bias2) + eps).
#ifndef REAL
#define REAL float
#endif

extern "C" __global__ void sgd_update(
        REAL* param, const REAL* grad, REAL* buf, long long size, double lr, double momentum,
        double dampening, int nesterov, double weight_decay, int first_step) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)blockDim.x * gridDim.x) {
        double g = (double)grad[i] + weight_decay * (double)param[i];
        if (momentum != 0.0) {
            double b = first_step ? g : momentum * (double)buf[i] + (1.0 - dampening) * g;
            buf[i] = (REAL)b;
            g = nesterov ? g + momentum * b : b;
        }
        param[i] = (REAL)((double)param[i] - lr * g);
    }
}

extern "C" __global__ void adam_update(
        REAL* param, const REAL* grad, REAL* exp_avg, REAL* exp_avg_sq, long long size,
        double lr, double beta1, double beta2, double eps, double weight_decay, int decoupled,
        double bias1, double bias2) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)blockDim.x * gridDim.x) {
        double p = param[i];
        double g = grad[i];
        if (decoupled) {
            p *= 1.0 - lr * weight_decay;
        } else {
            g += weight_decay * p;
        }
        double m = beta1 * (double)exp_avg[i] + (1.0 - beta1) * g;
        double v = beta2 * (double)exp_avg_sq[i] + (1.0 - beta2) * g * g;
        exp_avg[i] = (REAL)m;
        exp_avg_sq[i] = (REAL)v;
        param[i] = (REAL)(p - lr * (m / bias1) / (sqrt(v / bias2) + eps));
    }
}
