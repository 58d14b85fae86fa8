// The acceptance step as kernel bodies for mx.fast.metal_kernel (MLX writes the signatures).
// mlx_spec/kernels.py cuts this file at the "// ==== name ====" markers: prelude + common form
// the header, then one body per kernel. kernels/acceptance.cu is the twin: its common part
// and bodies are the same lines (only the thread-index line differs), checked by the tests.
// Reference that these reproduce bit for bit: mlx_spec/acceptance.py.

// ==== prelude ====
#include <metal_stdlib>

// Backend words, so that everything below reads the same as in acceptance.cu.
#define ACC_DEVICE inline
#define ACC_SHARED threadgroup
#define ACC_BARRIER() metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup)
#define ACC_NEG_INF (-INFINITY)
typedef long acc_i64;

template <typename T> ACC_DEVICE float acc_to_float(T x) { return static_cast<float>(x); }

// float(T(x)), rounding to nearest even: the reference forms the residual in the target's dtype.
template <typename T> ACC_DEVICE float acc_round_to(float x) {
  return static_cast<float>(static_cast<T>(x));
}

// NaN by its bits: fast math may fold x != x to false.
ACC_DEVICE bool acc_is_nan(float x) { return (as_type<uint>(x) & 0x7fffffffu) > 0x7f800000u; }

// ==== common ====
// Loads each thread issues before comparing any: keeps several reads of a row in flight.
#define ACC_UNROLL 4

ACC_DEVICE int acc_min(int a, int b) { return a < b ? a : b; }

// Greedy order: the higher value wins, then the lower id (plain greedy decoding's tie-break);
// a NaN beats every number, as in MLX's argmax (the first NaN is its argmax).
ACC_DEVICE bool acc_better(float value, int id, float best, int best_id) {
  const bool value_nan = acc_is_nan(value);
  const bool best_nan = acc_is_nan(best);
  if (value_nan || best_nan) {
    return value_nan && (!best_nan || id < best_id);
  }
  return value > best || (value == best && id < best_id);
}

// floor(r * 2^40) as int64 for r >= 0: the reference's integer_weights.
ACC_DEVICE acc_i64 acc_weight(float r) { return (acc_i64)(r * 1099511627776.0f); }

// floor(total * u24 / 2^24) split so that nothing overflows: the reference's threshold.
ACC_DEVICE acc_i64 acc_threshold(acc_i64 total, acc_i64 u24) {
  return (total >> 24) * u24 + (((total & 16777215) * u24) >> 24);
}

// Weight of id j in the residual max(0, p_n - q_n), formed in T as the reference does; q_n is
// one-hot on the draft when there is no q, and all zero in the bonus row (n == K).
// The pointer types are deduced: Metal binds inputs under 8 elements in another address space.
template <typename T, bool HAS_Q, typename PPtr, typename QPtr>
ACC_DEVICE acc_i64 acc_residual_weight(PPtr target, QPtr q, int draft, int n, int K, int V, int j) {
  const float p_j = acc_to_float(target[n * V + j]);
  float q_j = 0.0f;
  if (n < K) {
    q_j = HAS_Q ? acc_round_to<T>(acc_to_float(q[n * V + j])) : (j == draft ? 1.0f : 0.0f);
  }
  const float r = acc_round_to<T>(p_j - q_j);
  return acc_weight(r > 0.0f ? r : 0.0f);
}

// ==== accept_greedy ====
// Inputs: target (K+1, V) logits of dtype T, drafts (K,) int32. Outputs: out_n, out_extra.
// One group of THREADS threads. Rows are verified in order and the loop stops at the first
// mismatch, so a round reads n + 1 rows of the vocabulary, not K + 1.
const int tid = (int)thread_index_in_threadgroup;
const int K = target_shape[0] - 1;
const int V = target_shape[1];
ACC_SHARED float red_value[THREADS];
ACC_SHARED int red_id[THREADS];
int n = 0;
int extra = 0;
for (int row = 0; row <= K; ++row) {
  float best = ACC_NEG_INF;
  int best_id = 0x7fffffff;  // loses every tie, so a real id always replaces it
  // Strided over ids so that neighbouring threads read neighbouring ids.
  for (int base = tid; base < V; base += THREADS * ACC_UNROLL) {
    float value[ACC_UNROLL];
    for (int step = 0; step < ACC_UNROLL; ++step) {
      const int j = base + step * THREADS;
      value[step] = j < V ? acc_to_float(target[row * V + j]) : ACC_NEG_INF;
    }
    for (int step = 0; step < ACC_UNROLL; ++step) {
      const int j = base + step * THREADS;
      if (j < V && acc_better(value[step], j, best, best_id)) {
        best = value[step];
        best_id = j;
      }
    }
  }
  red_value[tid] = best;
  red_id[tid] = best_id;
  ACC_BARRIER();
  for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
    if (tid < stride &&
        acc_better(red_value[tid + stride], red_id[tid + stride], red_value[tid], red_id[tid])) {
      red_value[tid] = red_value[tid + stride];
      red_id[tid] = red_id[tid + stride];
    }
    ACC_BARRIER();
  }
  const int choice = red_id[0];
  ACC_BARRIER();  // every thread has read the winner before the next row overwrites it
  n = row;
  extra = choice;
  if (row == K || choice != drafts[row]) {
    break;
  }
}
if (tid == 0) {
  out_n[0] = n;
  out_extra[0] = extra;
}

// ==== accept_sampled ====
// Inputs: target (K+1, V) probabilities of dtype T, q (K, V) of dtype TQ (a 1-element dummy
// when HAS_Q is false), drafts (K,) int32, u (K+1,) float32. Outputs: out_n, out_extra.
// One group of THREADS threads; each owns one contiguous chunk of ids, so the first prefix sum
// above the threshold lies in exactly one chunk and only that thread walks its ids.
const int tid = (int)thread_index_in_threadgroup;
const int K = target_shape[0] - 1;
const int V = target_shape[1];
ACC_SHARED acc_i64 scan_r[THREADS];
ACC_SHARED acc_i64 scan_p[THREADS];
ACC_SHARED int n_shared;
// n = leading accepts of u_i * q_i(x_i) < p_i(x_i), in float32 as the reference; K <= 16.
if (tid == 0) {
  int accepted = 0;
  while (accepted < K) {
    const int x = drafts[accepted];
    const float p_x = acc_to_float(target[accepted * V + x]);
    const float q_x = HAS_Q ? acc_to_float(q[accepted * V + x]) : 1.0f;
    if (!(u[accepted] * q_x < p_x)) {
      break;
    }
    ++accepted;
  }
  n_shared = accepted;
}
ACC_BARRIER();
const int n = n_shared;
const int draft = n < K ? drafts[n] : -1;
const int chunk = (V + THREADS - 1) / THREADS;
const int lo = acc_min(tid * chunk, V);
const int hi = acc_min(lo + chunk, V);
// Both the residual and p_n are summed: which one is drawn from depends on the residual total.
acc_i64 sum_r = 0;
acc_i64 sum_p = 0;
for (int j = lo; j < hi; ++j) {
  sum_r += acc_residual_weight<T, HAS_Q>(target, q, draft, n, K, V, j);
  sum_p += acc_weight(acc_to_float(target[n * V + j]));
}
scan_r[tid] = sum_r;
scan_p[tid] = sum_p;
ACC_BARRIER();
// Inclusive scan of the chunk sums; integer sums are exact in any order.
for (int offset = 1; offset < THREADS; offset <<= 1) {
  const acc_i64 add_r = tid >= offset ? scan_r[tid - offset] : 0;
  const acc_i64 add_p = tid >= offset ? scan_p[tid - offset] : 0;
  ACC_BARRIER();
  scan_r[tid] += add_r;
  scan_p[tid] += add_p;
  ACC_BARRIER();
}
// A residual with no integer weight falls back to p_n, as in the reference.
const bool use_p = scan_r[THREADS - 1] == 0;
const acc_i64 total = use_p ? scan_p[THREADS - 1] : scan_r[THREADS - 1];
const acc_i64 inclusive = use_p ? scan_p[tid] : scan_r[tid];
const acc_i64 exclusive = tid == 0 ? 0 : (use_p ? scan_p[tid - 1] : scan_r[tid - 1]);
const acc_i64 u24 = (acc_i64)(u[K] * 16777216.0f);
const acc_i64 threshold = acc_threshold(total, u24);
if (threshold < total) {
  if (exclusive <= threshold && threshold < inclusive) {
    acc_i64 running = exclusive;
    int extra = hi - 1;
    for (int j = lo; j < hi; ++j) {
      running += use_p ? acc_weight(acc_to_float(target[n * V + j]))
                       : acc_residual_weight<T, HAS_Q>(target, q, draft, n, K, V, j);
      if (running > threshold) {
        extra = j;
        break;
      }
    }
    out_extra[0] = extra;
  }
} else if (tid == 0) {
  out_extra[0] = V - 1;  // an all-zero row (or u = 1): the reference clamps to the last id
}
if (tid == 0) {
  out_n[0] = n;
}
