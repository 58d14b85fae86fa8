"""The acceptance kernels against the MLX reference: same inputs, same n, same extra token.

The real kernels run only on Metal or CUDA; elsewhere those tests skip with the reason. What
runs everywhere: a numpy emulation of the kernels' algorithm (same thread decomposition, same
integer arithmetic), the CUDA bodies compiled for the host and run with one OS thread per GPU
thread (where g++ is found), an nvcc compile (where nvcc is found), and the Metal/CUDA twin check.
"""

import re
import shutil
import struct
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_spec  # noqa: F401  (loads OpenBLAS before MLX does any work)
from mlx_spec import kernels
from mlx_spec.acceptance import accept_greedy, accept_sampled

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


# --- cases --------------------------------------------------------------------------------

def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), kept as float32 values."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return to_bf16(x)
    return x


def greedy_case(rng, k, vocab, dtype, kind):
    logits = rng.normal(size=(k + 1, vocab)).astype(np.float32) * 3
    if kind == "ties":  # few distinct values: many equal maxima
        logits = np.round(logits / 3)
    if kind == "padding":  # padding ids never win
        logits[:, vocab - vocab // 8:] = -np.inf
    if kind == "nan":  # a NaN is the argmax (the first one), as in MLX and numpy
        logits[rng.random(logits.shape) < 0.02] = np.nan
    if kind == "all_nan":  # a row of NaN: id 0
        logits[rng.integers(0, k + 1)] = np.nan
    logits = round_to(logits, dtype)
    best = np.argmax(logits, axis=-1)
    accepted = {"all": k, "first_rejected": 0}.get(kind, rng.integers(0, k + 1))
    drafts = best[:k].copy()
    if accepted < k:
        drafts[accepted] = (best[accepted] + 1 + rng.integers(0, max(vocab - 1, 1))) % vocab
    return {"target": logits, "drafts": drafts.astype(np.int32), "dtype": dtype}


def sampled_case(rng, k, vocab, dtype, qdtype, kind):
    def dist(rows, temperature):
        logits = rng.normal(size=(rows, vocab)).astype(np.float32) / temperature
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        if kind == "padding":
            probs[:, vocab - vocab // 8:] = 0.0
        if kind == "sparse":  # a top-k style cut: most ids exactly 0
            probs[probs < np.quantile(probs, 0.9, axis=-1, keepdims=True)] = 0.0
        return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)

    p = dist(k + 1, 0.5)
    q = 0.6 * p[:k] + 0.4 * dist(k, 0.5) if kind != "unrelated" else dist(k, 0.5)
    drafts = np.array([rng.choice(vocab, p=row / row.sum()) for row in q], dtype=np.int32)
    u = rng.random(k + 1).astype(np.float32)
    if kind == "all":
        u[:k] = 0.0
        q[np.arange(k), drafts] = np.minimum(q[np.arange(k), drafts], p[np.arange(k), drafts])
    if kind == "first_rejected" and k:
        u[0] = 0.999999
        p[0, drafts[0]] = 0.0
    if kind == "zero_draft" and k:  # the draft had probability 0 under q (and maybe p)
        q[0, drafts[0]] = 0.0
        if rng.random() < 0.5:
            p[0, drafts[0]] = 0.0
    if kind == "extreme_u":
        u[k] = rng.choice([0.0, 1.0 - 2.0**-24])
    q_out = None if qdtype is None else round_to(q, qdtype)
    return {"target": round_to(p, dtype), "q": q_out, "drafts": drafts, "u": u, "dtype": dtype,
            "qdtype": qdtype}


def residual_rounding_case():
    """Rejected at 0 with fp16 rows where p - q rounds in fp16: 1 - 0.75 * 2^-11 -> 1 - 2^-11.

    u_k falls between the two resulting prefix sums, so forming the residual in float32 instead
    of in the target's dtype (as the reference does) draws id 0 instead of id 2.
    """
    p = np.array([[1.0, 0.0, 1.0], [0.3, 0.3, 0.4]], dtype=np.float32)
    q = np.array([[0.75 * 2.0**-11, 0.5, 0.0]], dtype=np.float32)
    return {"target": p, "q": q, "drafts": np.array([1], dtype=np.int32),
            "u": np.array([0.5, 0.4999], dtype=np.float32), "dtype": "float16",
            "qdtype": "float16"}


def greedy_cases(seed=0, vocabs=(1, 7, 64, 1000, 4099)):
    rng = np.random.default_rng(seed)
    kinds = ("random", "all", "first_rejected", "ties", "padding", "nan", "all_nan")
    return [greedy_case(rng, k, v, d, kind) for v in vocabs for k in (0, 1, 4, 8, 16)
            for d in DTYPES for kind in kinds if not (kind == "padding" and v < 8)]


def sampled_cases(seed=0, vocabs=(2, 9, 64, 1000, 4099)):
    rng = np.random.default_rng(seed)
    kinds = ("random", "all", "first_rejected", "zero_draft", "padding", "sparse", "unrelated",
             "extreme_u")
    out = [residual_rounding_case()]
    for v in vocabs:
        for k in (0, 1, 4, 8, 16):
            for d in DTYPES:
                for qd in (None, d, "float32"):
                    for kind in kinds:
                        if not (kind == "padding" and v < 8):
                            out.append(sampled_case(rng, k, v, d, qd, kind))
    return out


def mx_in(x, dtype):
    return mx.array(np.asarray(x, dtype=np.float32)).astype(DTYPES[dtype])


def reference(case):
    drafts = mx.array(case["drafts"])
    if "u" not in case:
        n, extra = accept_greedy(mx_in(case["target"], case["dtype"]), drafts)
    else:
        q = None if case["q"] is None else mx_in(case["q"], case["qdtype"])
        n, extra = accept_sampled(mx_in(case["target"], case["dtype"]), q, drafts,
                                  mx.array(case["u"]))
    return n.item(), extra.item()


def test_residual_rounding_case_draws_id_2_in_the_reference():
    assert reference(residual_rounding_case()) == (0, 2)


# --- numpy emulation of the kernels' algorithm ---------------------------------------------

def better(value, ids, best, best_ids):
    value_nan, best_nan = np.isnan(value), np.isnan(best)  # a NaN wins, as in MLX's argmax
    numbers = (value > best) | ((value == best) & (ids < best_ids))
    return np.where(value_nan | best_nan, value_nan & (~best_nan | (ids < best_ids)), numbers)


def emulate_greedy(case, threads):
    """accept_greedy of kernels/acceptance.*: strided per-thread argmax, then a tree reduction."""
    target, drafts = case["target"].astype(np.float32), case["drafts"]
    k, vocab = target.shape[0] - 1, target.shape[1]
    for row in range(k + 1):
        best = np.full(threads, -np.inf, dtype=np.float32)
        best_id = np.full(threads, 0x7FFFFFFF, dtype=np.int64)
        for base in range(0, vocab, threads):  # thread t reads ids t, t + threads, ...
            j = base + np.arange(threads)
            live = j < vocab
            value = np.where(live, target[row, np.minimum(j, vocab - 1)], -np.inf)
            take = live & better(value, j, best, best_id)
            best, best_id = np.where(take, value, best), np.where(take, j, best_id)
        stride = threads // 2
        while stride:
            lo, hi = slice(0, stride), slice(stride, 2 * stride)
            take = better(best[hi], best_id[hi], best[lo], best_id[lo])
            best[lo] = np.where(take, best[hi], best[lo])
            best_id[lo] = np.where(take, best_id[hi], best_id[lo])
            stride //= 2
        choice = int(best_id[0])
        if row == k or choice != drafts[row]:
            return row, choice


def emulate_sampled(case, threads):
    """accept_sampled of kernels/acceptance.*: chunk per thread, Hillis-Steele scan, one walker."""
    p, q, drafts, u, dtype = case["target"], case["q"], case["drafts"], case["u"], case["dtype"]
    k, vocab = p.shape[0] - 1, p.shape[1]
    f32 = np.float32
    n = 0
    while n < k:
        x = drafts[n]
        q_x = f32(1.0) if q is None else f32(q[n, x])
        if not f32(u[n]) * q_x < f32(p[n, x]):
            break
        n += 1
    if n < k:
        q_row = round_to(q[n], dtype) if q is not None else (np.arange(vocab) == drafts[n])
    else:
        q_row = np.zeros(vocab)
    r = round_to(p[n].astype(f32) - q_row.astype(f32), dtype)
    w_r = (np.maximum(r, f32(0)) * f32(2.0**40)).astype(np.int64)
    w_p = (p[n].astype(f32) * f32(2.0**40)).astype(np.int64)
    chunk = -(-vocab // threads)

    def chunk_sums(w):
        padded = np.zeros(threads * chunk, dtype=np.int64)
        padded[:vocab] = w
        return padded.reshape(threads, chunk).sum(axis=1)

    scan_r, scan_p = chunk_sums(w_r), chunk_sums(w_p)
    offset = 1
    while offset < threads:  # every step reads the previous step's values, as after a barrier
        scan_r[offset:], scan_p[offset:] = scan_r[offset:] + scan_r[:-offset], \
            scan_p[offset:] + scan_p[:-offset]
        offset *= 2
    use_p = scan_r[-1] == 0
    scan, w = (scan_p, w_p) if use_p else (scan_r, w_r)
    total = int(scan[-1])
    u24 = int(f32(u[k]) * f32(2.0**24))
    threshold = (total >> 24) * u24 + (((total & 0xFFFFFF) * u24) >> 24)
    if threshold >= total:
        return n, vocab - 1
    exclusive = np.concatenate([[0], scan[:-1]])
    (tid,) = np.nonzero((exclusive <= threshold) & (threshold < scan))[0]
    lo, hi = min(tid * chunk, vocab), min(tid * chunk + chunk, vocab)
    running = exclusive[tid] + np.cumsum(w[lo:hi])
    return n, lo + int(np.argmax(running > threshold))


@pytest.mark.parametrize("threads", [1024, 512, 32])
def test_emulated_greedy_kernel_matches_reference(threads):
    for case in greedy_cases(seed=threads):
        assert emulate_greedy(case, threads) == reference(case), case


@pytest.mark.parametrize("threads", [1024, 512, 32])
def test_emulated_sampled_kernel_matches_reference(threads):
    for case in sampled_cases(seed=threads, vocabs=(2, 9, 1000, 4099)):
        assert emulate_sampled(case, threads) == reference(case), case


def test_emulated_kernels_match_reference_at_qwen_vocabulary():
    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        for kind in ("random", "padding", "first_rejected"):
            case = greedy_case(rng, 8, 151_936, dtype, kind)
            assert emulate_greedy(case, 1024) == reference(case)
            case = sampled_case(rng, 8, 151_936, dtype, dtype, kind)
            assert emulate_sampled(case, 1024) == reference(case)


# --- the kernel sources -------------------------------------------------------------------

def sections(name):
    parts = re.split(r"^// ==== (\w+) ====\n", (ROOT / "kernels" / name).read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_metal_and_cuda_sources_are_line_for_line_twins():
    metal, cuda = sections("acceptance.metal"), sections("acceptance.cu")
    assert list(metal) == list(cuda) == ["prelude", "common", "accept_greedy", "accept_sampled"]
    for name in ("common", "accept_greedy", "accept_sampled"):
        assert metal[name].replace("thread_index_in_threadgroup", "threadIdx.x") == cuda[name]


def test_packaged_sources_are_the_kernels_folder():
    for name in kernels.SOURCE_FILES.values():
        packaged = ROOT / "mlx_spec" / "data" / name
        assert packaged.read_text() == (ROOT / "kernels" / name).read_text()
    for backend in kernels.SOURCE_FILES:
        assert set(kernels.load_source(backend)) == {"header", "accept_greedy", "accept_sampled"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_source_compiles_with_nvcc_as_mlx_wraps_it(tmp_path):
    src = sections("acceptance.cu")
    unit = ["#include <cooperative_groups.h>", "#include <cuda/std/array>",
            src["prelude"] + src["common"], "namespace mlx::core::cu {",
            "using Shape = cuda::std::array<int32_t, 8>;"]
    types = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
    for t_name, t in types.items():  # MLX's cuda_kernel signature and template prologue
        unit.append(f"__global__ void g_{t_name}(const {t}* target, const __grid_constant__ "
                    "Shape target_shape, const int32_t* drafts, int32_t* out_n, "
                    f"int32_t* out_extra) {{\n using T = {t};\n constexpr int THREADS = 1024;\n"
                    + src["accept_greedy"] + "}")
        for q_name, tq in types.items():
            for has_q in ("true", "false"):
                unit.append(
                    f"__global__ void s_{t_name}_{q_name}_{has_q}(const {t}* target, "
                    "const __grid_constant__ Shape target_shape, const " + tq + "* q, "
                    "const int32_t* drafts, const float* u, int32_t* out_n, int32_t* out_extra)"
                    f" {{\n using T = {t};\n using TQ = {tq};\n constexpr bool HAS_Q = {has_q};\n"
                    " constexpr int THREADS = 1024;\n" + src["accept_sampled"] + "}")
    unit.append("}")
    path = tmp_path / "acceptance_unit.cu"
    path.write_text("\n".join(unit))
    done = subprocess.run(["nvcc", "-ptx", "-arch=sm_90", "-std=c++17", "-o",
                           str(tmp_path / "out.ptx"), str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


# --- the CUDA bodies run on the host: one OS thread per GPU thread --------------------------

HOST_PRELUDE = r"""
#include <array>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
#define ACC_DEVICE inline
#define ACC_SHARED static
static std::barrier<>* acc_group_barrier;
#define ACC_BARRIER() acc_group_barrier->arrive_and_wait()
#define ACC_NEG_INF (-INFINITY)
typedef long long acc_i64;
struct acc_half { uint16_t bits; };
struct acc_bf16 { uint16_t bits; };
inline float acc_to_float(float x) { return x; }
inline float acc_to_float(acc_half x) { _Float16 h; std::memcpy(&h, &x.bits, 2); return (float)h; }
inline float acc_to_float(acc_bf16 x) {
  uint32_t b = (uint32_t)x.bits << 16; float f; std::memcpy(&f, &b, 4); return f;
}
template <typename T> inline float acc_round_to(float x);
template <> inline float acc_round_to<float>(float x) { return x; }
template <> inline float acc_round_to<acc_half>(float x) { return (float)(_Float16)x; }
template <> inline float acc_round_to<acc_bf16>(float x) {
  uint32_t b; std::memcpy(&b, &x, 4);
  b = (b + 0x7fff + ((b >> 16) & 1)) & 0xffff0000u;
  float f; std::memcpy(&f, &b, 4); return f;
}
inline bool acc_is_nan(float x) {
  uint32_t b; std::memcpy(&b, &x, 4); return (b & 0x7fffffffu) > 0x7f800000u;
}
struct AccThreadIdx { unsigned x; };
thread_local AccThreadIdx threadIdx;
using Shape = std::array<int32_t, 8>;
"""

HOST_MAIN = r"""
template <typename T, int THREADS>
void greedy_body(const T* target, Shape target_shape, const int32_t* drafts, int32_t* out_n,
                 int32_t* out_extra) {
@GREEDY@
}

template <typename T, typename TQ, bool HAS_Q, int THREADS>
void sampled_body(const T* target, Shape target_shape, const TQ* q, const int32_t* drafts,
                  const float* u, int32_t* out_n, int32_t* out_extra) {
@SAMPLED@
}

template <int THREADS, typename F> void launch(F body) {
  std::barrier<> group(THREADS);
  acc_group_barrier = &group;
  std::vector<std::thread> pool;
  for (int t = 0; t < THREADS; ++t) pool.emplace_back([&, t] { threadIdx.x = t; body(); });
  for (auto& th : pool) th.join();
}

template <typename T, int THREADS>
void run_greedy(std::vector<char>& target, Shape shape, std::vector<int32_t>& drafts, int* out) {
  launch<THREADS>([&] { greedy_body<T, THREADS>((const T*)target.data(), shape, drafts.data(),
                                                 out, out + 1); });
}

template <typename T, typename TQ, bool HAS_Q, int THREADS>
void run_sampled(std::vector<char>& target, Shape shape, std::vector<char>& q,
                 std::vector<int32_t>& drafts, std::vector<float>& u, int* out) {
  launch<THREADS>([&] {
    sampled_body<T, TQ, HAS_Q, THREADS>((const T*)target.data(), shape, (const TQ*)q.data(),
                                        drafts.data(), u.data(), out, out + 1);
  });
}

template <typename T, int THREADS>
void sampled_for_q(int qcode, std::vector<char>& target, Shape shape, std::vector<char>& q,
                   std::vector<int32_t>& drafts, std::vector<float>& u, int* out) {
  if (qcode < 0) run_sampled<T, float, false, THREADS>(target, shape, q, drafts, u, out);
  if (qcode == 0) run_sampled<T, float, true, THREADS>(target, shape, q, drafts, u, out);
  if (qcode == 1) run_sampled<T, acc_half, true, THREADS>(target, shape, q, drafts, u, out);
  if (qcode == 2) run_sampled<T, acc_bf16, true, THREADS>(target, shape, q, drafts, u, out);
}

template <int THREADS>
void one_case(int mode, int tcode, int qcode, std::vector<char>& target, Shape shape,
              std::vector<char>& q, std::vector<int32_t>& drafts, std::vector<float>& u,
              int* out) {
  if (mode == 0) {
    if (tcode == 0) run_greedy<float, THREADS>(target, shape, drafts, out);
    if (tcode == 1) run_greedy<acc_half, THREADS>(target, shape, drafts, out);
    if (tcode == 2) run_greedy<acc_bf16, THREADS>(target, shape, drafts, out);
  } else {
    if (tcode == 0) sampled_for_q<float, THREADS>(qcode, target, shape, q, drafts, u, out);
    if (tcode == 1) sampled_for_q<acc_half, THREADS>(qcode, target, shape, q, drafts, u, out);
    if (tcode == 2) sampled_for_q<acc_bf16, THREADS>(qcode, target, shape, q, drafts, u, out);
  }
}

int main(int argc, char** argv) {
  FILE* f = std::fopen(argv[1], "rb");
  int32_t head[6];
  while (std::fread(head, 4, 6, f) == 6) {
    int mode = head[0], tcode = head[1], qcode = head[2], threads = head[3], k = head[4],
        vocab = head[5];
    int tsize = tcode == 0 ? 4 : 2, qsize = qcode == 0 ? 4 : 2;
    std::vector<char> target((size_t)(k + 1) * vocab * tsize);
    std::fread(target.data(), 1, target.size(), f);
    std::vector<char> q(qcode < 0 ? 4 : (size_t)k * vocab * qsize + 4);
    if (qcode >= 0) std::fread(q.data(), 1, q.size() - 4, f);
    std::vector<int32_t> drafts(k + 1);
    std::fread(drafts.data(), 4, k, f);
    std::vector<float> u(k + 1);
    if (mode == 1) std::fread(u.data(), 4, k + 1, f);
    Shape shape{k + 1, vocab};
    int out[2] = {-1, -1};
    if (threads == 32) one_case<32>(mode, tcode, qcode, target, shape, q, drafts, u, out);
    if (threads == 64) one_case<64>(mode, tcode, qcode, target, shape, q, drafts, u, out);
    std::printf("%d %d\n", out[0], out[1]);
  }
  return 0;
}
"""

CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


def raw(x, dtype):
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return x.astype(np.float16).tobytes()
    if dtype == "bfloat16":
        return (to_bf16(x).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return x.tobytes()


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: cannot run the CUDA bodies on the host")
    src = sections("acceptance.cu")
    code = (HOST_PRELUDE + src["common"]
            + HOST_MAIN.replace("@GREEDY@", src["accept_greedy"])
            .replace("@SAMPLED@", src["accept_sampled"]))
    folder = tmp_path_factory.mktemp("host_kernels")
    (folder / "host.cpp").write_text(code)
    done = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-o", str(folder / "host"),
                           str(folder / "host.cpp")], capture_output=True, text=True)
    if done.returncode != 0 and "_Float16" in done.stderr:
        pytest.skip("this g++ lacks _Float16")
    assert done.returncode == 0, done.stderr[-3000:]

    def run(cases, threads):
        blob = bytearray()
        for c in cases:
            sampled = "u" in c
            qcode = CODES[c["qdtype"]] if sampled and c["q"] is not None else -1
            k, vocab = c["target"].shape[0] - 1, c["target"].shape[1]
            blob += struct.pack("6i", int(sampled), CODES[c["dtype"]], qcode, threads, k, vocab)
            blob += raw(c["target"], c["dtype"])
            if qcode >= 0:
                blob += raw(c["q"], c["qdtype"])
            blob += np.asarray(c["drafts"], dtype=np.int32).tobytes()
            if sampled:
                blob += np.asarray(c["u"], dtype=np.float32).tobytes()
        (folder / "cases.bin").write_bytes(bytes(blob))
        # a barrier that not every thread reaches would hang: the timeout turns it into a failure
        out = subprocess.run([str(folder / "host"), str(folder / "cases.bin")],
                             capture_output=True, text=True, timeout=600, check=True).stdout
        return [tuple(map(int, line.split())) for line in out.splitlines()]

    return run


@pytest.mark.parametrize("threads", [32, 64])
def test_cuda_greedy_body_run_on_host_matches_reference(host_kernels, threads):
    cases = greedy_cases(seed=10 + threads, vocabs=(1, 7, 64, 1000))
    assert host_kernels(cases, threads) == [reference(c) for c in cases]


@pytest.mark.parametrize("threads", [32, 64])
def test_cuda_sampled_body_run_on_host_matches_reference(host_kernels, threads):
    cases = sampled_cases(seed=20 + threads, vocabs=(2, 9, 64, 1000))
    assert host_kernels(cases, threads) == [reference(c) for c in cases]


def test_cuda_bodies_run_on_host_match_reference_at_qwen_vocabulary(host_kernels):
    rng = np.random.default_rng(3)
    cases = [greedy_case(rng, 8, 151_936, d, "padding") for d in DTYPES]
    cases += [sampled_case(rng, 8, 151_936, d, d, "first_rejected") for d in DTYPES]
    assert host_kernels(cases, 64) == [reference(c) for c in cases]


# --- selection of the kernel --------------------------------------------------------------

def test_environment_variable_forces_the_reference(monkeypatch):
    monkeypatch.setenv(kernels.FORCE_REFERENCE_ENV, "1")
    assert kernels.get_kernel(True) is None and kernels.get_kernel(False) is None
    assert "reference" in kernels.backend_kernel_name()


@pytest.mark.skipif(kernels.kernel_backend() is not None, reason="checks the CPU backend")
def test_no_kernel_on_the_cpu_backend():
    assert kernels.get_kernel(True) is None and kernels.get_kernel(False) is None


# --- the real kernels ---------------------------------------------------------------------

NO_KERNEL = (kernels.kernel_backend() is None or kernels.reference_forced())
requires_kernel = pytest.mark.skipif(
    NO_KERNEL, reason="the acceptance kernels need MLX's Metal or CUDA backend; the "
    f"acceptance step here is the {kernels.backend_kernel_name()}")


@requires_kernel
def test_kernel_is_built_once():
    assert kernels.get_kernel(True) is kernels.get_kernel(True)
    assert kernels.get_kernel(False) is kernels.get_kernel(False)


def run_kernel(case):
    drafts = mx.array(case["drafts"])
    if "u" not in case:
        n, extra = kernels.get_kernel(True)(mx_in(case["target"], case["dtype"]), drafts)
    else:
        q = None if case["q"] is None else mx_in(case["q"], case["qdtype"])
        n, extra = kernels.get_kernel(False)(mx_in(case["target"], case["dtype"]), q, drafts,
                                             mx.array(case["u"]))
    return n.item(), extra.item()


@requires_kernel
def test_greedy_kernel_matches_reference():
    for case in greedy_cases(seed=100, vocabs=(1, 7, 64, 1000, 4099, 151_936)):
        assert run_kernel(case) == reference(case), case


@requires_kernel
def test_sampled_kernel_matches_reference():
    for case in sampled_cases(seed=200, vocabs=(2, 9, 64, 1000, 4099, 151_936)):
        assert run_kernel(case) == reference(case), case


@requires_kernel
def test_kernels_match_reference_at_vocabularies_up_to_256k():
    rng = np.random.default_rng(300)
    for vocab in (152_064, 262_144):
        for dtype in DTYPES:
            case = greedy_case(rng, 16, vocab, dtype, "random")
            assert run_kernel(case) == reference(case)
            case = sampled_case(rng, 16, vocab, dtype, None, "random")
            assert run_kernel(case) == reference(case)


# --- how the kernels are built and fed (a recording stand-in for MLX's kernel factory) ------

@pytest.fixture
def recorded_kernels(monkeypatch):
    calls = []

    def make(**spec):
        calls.append(spec)

        def kernel(**launch):
            calls.append(launch)
            return mx.zeros((1,), mx.int32), mx.zeros((1,), mx.int32)
        return kernel

    monkeypatch.setattr(mx.fast, "cuda_kernel", make)
    kernels._build.cache_clear()
    yield calls
    kernels._build.cache_clear()


def test_kernel_name_changes_with_its_source(recorded_kernels, monkeypatch):
    kernels._build("cuda", True)
    original = kernels.load_source
    monkeypatch.setattr(kernels, "load_source", lambda backend: {
        **original(backend), "accept_greedy": original(backend)["accept_greedy"] + "// edited\n"})
    kernels._build.cache_clear()
    kernels._build("cuda", True)
    first, second = (spec["name"] for spec in recorded_kernels if "name" in spec)
    assert first.startswith("mlx_spec_accept_greedy_") and first != second


@pytest.mark.parametrize("k", [0, 1, 6, 7, 8, 12])
def test_short_inputs_reach_the_kernel_padded_to_eight(recorded_kernels, k):
    rng = np.random.default_rng(k)
    target = mx.array(rng.normal(size=(k + 1, 50)).astype(np.float32))
    drafts = mx.array(rng.integers(0, 50, size=k).astype(np.int32))
    u = mx.array(rng.random(k + 1).astype(np.float32))
    kernels._build("cuda", True)(target, drafts)
    kernels._build("cuda", False)(mx.softmax(target, axis=-1), None, drafts, u)
    greedy, sampled = (call["inputs"] for call in recorded_kernels if "inputs" in call)
    for ids in (greedy[1], sampled[2]):
        assert ids.size == max(k, kernels.MIN_INPUT)
        assert ids[:k].tolist() == drafts.tolist()
    assert sampled[3].size == max(k + 1, kernels.MIN_INPUT)
    assert np.array_equal(np.array(sampled[3][: k + 1]), np.array(u))
