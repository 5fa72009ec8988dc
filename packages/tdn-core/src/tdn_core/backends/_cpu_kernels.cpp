// TDN's CPU kernels, float32: cp_eager's fused CP forward and the sparse backend's
// bilinear contractions (see _cpu_kernels.py, cp_eager.py and _sparse_contraction.py).
//
// cp_eager, uvu:
//
//   out[e, k, c] = w[e, c] * sum_r C[k, r] v[e, r] sum_i A[i, r] x[e, i, c]
//
// Per edge and block of channels, u = diag(v_e) A^T x_e ([R, block], stays in L1/L2)
// and then C u, both as register-blocked loops of broadcast FMAs over vectors.
// MKL runs these per-edge [16 x 63] x [63 x 64] products one small GEMM call at a
// time, on one core, at about half the machine's matmul rate; fused, nothing leaves
// the cache between the two products and edges split over threads.
//
// Plain C ABI (loaded with ctypes, which releases the GIL); channels % LANES == 0
// (_cpu_kernels.py asks for a multiple of 16, every build's LANES). Built with -O3
// -march=native by _cpu_kernels.py, in GCC's vector extension, which maps onto
// AVX-512, AVX2 or NEON registers.

#include <algorithm>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

// One vector register of floats (LANES of them), and the register block: ROWS x
// MAX_VECS accumulators plus MAX_VECS operands and a broadcast, within the register file
// (AVX-512 and NEON: 32 registers, AVX2: 16). Channels per block: MAX_VECS * LANES.
#if defined(__AVX512F__)
constexpr int LANES = 16, ROWS = 4;
#elif defined(__AVX__)
constexpr int LANES = 8, ROWS = 2;
#else
constexpr int LANES = 4, ROWS = 4;
#endif
constexpr int MAX_VECS = 4;
typedef float vec __attribute__((vector_size(4 * LANES)));
typedef float unaligned_vec __attribute__((vector_size(4 * LANES), aligned(4)));

// Pins a vector to a register (see block()).
#if defined(__x86_64__)
#define TDN_IN_REGISTER(v) asm("" : "+v"(v))
#elif defined(__aarch64__)
#define TDN_IN_REGISTER(v) asm("" : "+w"(v))
#else
#define TDN_IN_REGISTER(v) (void)(v)
#endif

inline vec load(const float* p) { return *reinterpret_cast<const unaligned_vec*>(p); }

inline void store(float* p, vec v) { *reinterpret_cast<unaligned_vec*>(p) = v; }

// s - 0 is s even for s = -0, so this folds to one broadcast (vec{} + s does not:
// -0 + 0 = +0, a scalar add is kept before the broadcast)
inline vec splat(float s) { return s - vec{}; }

// acc[rows][vecs] = sum_t lhs(row, t) * rhs[t][vecs], the [rows, n] x [n, vecs * LANES]
// block of a product: lhs(row, t) = lhs[row * row_stride + t * t_stride], rhs row t at
// rhs + t * rhs_stride. The result goes to dst[row * dst_stride + ...], times scale.
// With dot_out, sum_row acc[row] * dot_with[row * dst_stride + ...] (before the scales)
// is added to dot_out[...].
template <int NR, int NV>
inline void block(const float* lhs, int64_t row_stride, int64_t t_stride, int64_t n,
                  const float* rhs, int64_t rhs_stride, float* dst, int64_t dst_stride,
                  const float* row_scale, const float* lane_scale,
                  const float* dot_with = nullptr, float* dot_out = nullptr) {
  vec acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = vec{};
  for (int64_t t = 0; t < n; ++t) {
    vec b[NV];
    for (int j = 0; j < NV; ++j) {
      b[j] = load(rhs + t * rhs_stride + j * LANES);
      // held in a register: GCC would fold the load into each of the NR FMAs instead,
      // NR times the loads, which then bound the loop
      TDN_IN_REGISTER(b[j]);
    }
    for (int r = 0; r < NR; ++r) {
      const vec a = splat(lhs[r * row_stride + t * t_stride]);
      for (int j = 0; j < NV; ++j) acc[r][j] += a * b[j];
    }
  }
  vec dot[NV];
  for (int j = 0; j < NV; ++j) dot[j] = vec{};
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NV; ++j) {
      vec o = acc[r][j];
      if (dot_out) dot[j] += o * load(dot_with + r * dst_stride + j * LANES);
      if (row_scale) o *= splat(row_scale[r]);
      if (lane_scale) o *= load(lane_scale + j * LANES);
      store(dst + r * dst_stride + j * LANES, o);
    }
  if (dot_out)
    for (int j = 0; j < NV; ++j) store(dot_out + j * LANES, load(dot_out + j * LANES) + dot[j]);
}

template <int NV>
inline void rows(int64_t nrows, const float* lhs, int64_t row_stride, int64_t t_stride,
                 int64_t n, const float* rhs, int64_t rhs_stride, float* dst,
                 int64_t dst_stride, const float* row_scale, const float* lane_scale,
                 const float* dot_with = nullptr, float* dot_out = nullptr) {
  int64_t r = 0;
  const auto at = [&](int64_t row) { return dot_with ? dot_with + row * dst_stride : nullptr; };
  for (; r + ROWS <= nrows; r += ROWS)
    block<ROWS, NV>(lhs + r * row_stride, row_stride, t_stride, n, rhs, rhs_stride,
                    dst + r * dst_stride, dst_stride, row_scale ? row_scale + r : nullptr,
                    lane_scale, at(r), dot_out);
  for (; r < nrows; ++r)
    block<1, NV>(lhs + r * row_stride, row_stride, t_stride, n, rhs, rhs_stride,
                 dst + r * dst_stride, dst_stride, row_scale ? row_scale + r : nullptr,
                 lane_scale, at(r), dot_out);
}

struct Problem {
  const float *x, *v, *w, *A, *C;
  float* out;
  int64_t d1, rank, d3, channels;
};

// One channel block of one edge: u = diag(v_e) A^T x_e, then out_e = (C u) * w_e.
template <int NV>
void edge_block(const Problem& p, int64_t e, int64_t c0, float* u) {
  const int64_t ch = p.channels, R = p.rank;
  const float* xe = p.x + e * p.d1 * ch + c0;
  // u[r, :] = v[e, r] * sum_i A[i, r] x[e, i, :]   (lhs(r, i) = A[i * R + r])
  rows<NV>(R, p.A, 1, R, p.d1, xe, ch, u, MAX_VECS * LANES, p.v + e * R, nullptr);
  // out[e, k, :] = w[e, :] * sum_r C[k, r] u[r, :]   (lhs(k, r) = C[k * R + r])
  rows<NV>(p.d3, p.C, R, 1, R, u, MAX_VECS * LANES, p.out + e * p.d3 * ch + c0, ch,
           nullptr, p.w + e * ch + c0);
}

void cp_edges(const Problem& p, int64_t begin, int64_t end) {
  std::vector<float> u(static_cast<size_t>(p.rank) * MAX_VECS * LANES);
  for (int64_t e = begin; e < end; ++e)
    for (int64_t c0 = 0; c0 < p.channels; c0 += MAX_VECS * LANES) {
      switch (std::min<int64_t>(MAX_VECS, (p.channels - c0) / LANES)) {
        case 4: edge_block<4>(p, e, c0, u.data()); break;
        case 3: edge_block<3>(p, e, c0, u.data()); break;
        case 2: edge_block<2>(p, e, c0, u.data()); break;
        default: edge_block<1>(p, e, c0, u.data()); break;
      }
    }
}

// Calls work(begin, end) on `threads` contiguous ranges of [0, E), one per std::thread
// (the calling thread takes the first).
template <class Work>
void split_edges(int64_t E, int64_t threads, const Work& work) {
  threads = std::max<int64_t>(1, std::min(threads, E));
  if (threads == 1) {
    work(0, E);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (E + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t b = t * per, e = std::min(E, b + per);
    if (b < e) pool.emplace_back([&work, b, e] { work(b, e); });
  }
  work(0, std::min(E, per));
  for (auto& th : pool) th.join();
}

// ---------------------------------------------------------------------------------
// Sparse bilinear contractions (the exact `sparse` backend): M's nonzeros as index lists,
// ordered by output row, so that each output row accumulates in registers. Two layouts:
//
// S (output with channels), groups g of entries that share (o, a-row):
//   out[e, o, :] = s[e, :] * sum_{g in row o} a[e, ga[g], :] * sum_{n in g} val[n] b[e, eb[n], :]
//   with b [E, db, C], or b [E, db] (one value for every channel: then the group sums are
//   the per-edge matrix K[o, i], built densely in cache, and out = K a is a register-
//   blocked product; the CG tensors' (o, i) pairs are 62-100% dense).
// R (output without channels), distinct (a-row, b-row) pairs p, channel weights s:
//   out[e, o] = sum_{n in row o} val[n] P[e, ep[n]],
//   P[e, p] = sum_c s[e, c] a[e, pa[p], c] b[e, pb[p], c]
struct Sparse {
  const float *a, *b, *scale, *val, *dot_with;
  float *out, *dot_out;
  const int64_t *t0, *t1, *t2, *t3;  // S: row_ptr, ga, group_ptr, eb; R: row_ptr, ep, pa, pb
  int64_t E, da, db, d_out, channels, groups;
};

// S layout, b with channels: one channel block of one edge.
template <int NV>
void s_channelwise(const Sparse& p, int64_t e, int64_t c0) {
  const int64_t ch = p.channels;
  const float* ae = p.a + e * p.da * ch + c0;
  const float* be = p.b + e * p.db * ch + c0;
  float* oe = p.out + e * p.d_out * ch + c0;
  vec dot[NV];
  for (int j = 0; j < NV; ++j) dot[j] = vec{};
  for (int64_t o = 0; o < p.d_out; ++o) {
    vec acc[NV];
    for (int j = 0; j < NV; ++j) acc[j] = vec{};
    for (int64_t g = p.t0[o]; g < p.t0[o + 1]; ++g) {
      vec t[NV];
      for (int j = 0; j < NV; ++j) t[j] = vec{};
      for (int64_t n = p.t2[g]; n < p.t2[g + 1]; ++n) {
        const vec s = splat(p.val[n]);
        const float* bj = be + p.t3[n] * ch;
        for (int j = 0; j < NV; ++j) t[j] += s * load(bj + j * LANES);
      }
      const float* ai = ae + p.t1[g] * ch;
      for (int j = 0; j < NV; ++j) acc[j] += load(ai + j * LANES) * t[j];
    }
    for (int j = 0; j < NV; ++j) {
      if (p.dot_out) dot[j] += acc[j] * load(p.dot_with + (e * p.d_out + o) * ch + c0 + j * LANES);
      if (p.scale) acc[j] *= load(p.scale + e * ch + c0 + j * LANES);
      store(oe + o * ch + j * LANES, acc[j]);
    }
  }
  if (p.dot_out)
    for (int j = 0; j < NV; ++j) store(p.dot_out + e * ch + c0 + j * LANES, dot[j]);
}

// K for LANES edges at once, lane l = edge e0 + l (Kb [d_out * da][LANES]): the group
// sums as vector FMAs across edges, which per edge would be a chain of scalar ones.
void build_k(const Sparse& p, int64_t e0, int64_t n_edges, float* yT, float* Kb) {
  for (int64_t j = 0; j < p.db; ++j)
    for (int l = 0; l < LANES; ++l)
      yT[j * LANES + l] = l < n_edges ? p.b[(e0 + l) * p.db + j] : 0.0f;
  std::fill(Kb, Kb + p.d_out * p.da * LANES, 0.0f);
  for (int64_t o = 0; o < p.d_out; ++o)
    for (int64_t g = p.t0[o]; g < p.t0[o + 1]; ++g) {
      vec t = vec{};
      for (int64_t n = p.t2[g]; n < p.t2[g + 1]; ++n) t += splat(p.val[n]) * load(yT + p.t3[n] * LANES);
      store(Kb + (o * p.da + p.t1[g]) * LANES, t);
    }
}

template <class Block>
void channel_blocks(int64_t channels, const Block& block) {
  for (int64_t c0 = 0; c0 < channels; c0 += MAX_VECS * LANES) {
    switch (std::min<int64_t>(MAX_VECS, (channels - c0) / LANES)) {
      case 4: block(c0, std::integral_constant<int, 4>{}); break;
      case 3: block(c0, std::integral_constant<int, 3>{}); break;
      case 2: block(c0, std::integral_constant<int, 2>{}); break;
      default: block(c0, std::integral_constant<int, 1>{}); break;
    }
  }
}

void s_edges(const Sparse& p, bool b_channels, int64_t begin, int64_t end) {
  if (b_channels) {
    for (int64_t e = begin; e < end; ++e)
      channel_blocks(p.channels, [&](int64_t c0, auto nv) { s_channelwise<nv()>(p, e, c0); });
    return;
  }
  const int64_t ch = p.channels;
  std::vector<float> yT(static_cast<size_t>(p.db * LANES));
  std::vector<float> Kb(static_cast<size_t>(p.d_out * p.da * LANES));
  for (int64_t e0 = begin; e0 < end; e0 += LANES) {
    const int64_t n_edges = std::min<int64_t>(LANES, end - e0);
    build_k(p, e0, n_edges, yT.data(), Kb.data());
    for (int64_t l = 0; l < n_edges; ++l) {
      const int64_t e = e0 + l;
      // out_e = K_e a_e, K_e[o, i] = Kb[(o * da + i) * LANES + l]
      channel_blocks(ch, [&](int64_t c0, auto nv) {
        rows<nv()>(p.d_out, Kb.data() + l, p.da * LANES, LANES, p.da, p.a + e * p.da * ch + c0,
                   ch, p.out + e * p.d_out * ch + c0, ch, nullptr,
                   p.scale ? p.scale + e * ch + c0 : nullptr,
                   p.dot_out ? p.dot_with + e * p.d_out * ch + c0 : nullptr,
                   p.dot_out ? p.dot_out + e * ch + c0 : nullptr);
      });
    }
  }
}

// R layout: P_e = a_e (b_e diag(s_e))^T [da, db] as one register-blocked product over the
// channels (b_e transposed into cache first, its columns padded to LANES), copied into
// lane l of a block of LANES edges; then the sums over each output row's entries as
// vector FMAs across those edges (per edge, nnz dependent scalar FMAs: at L = 8 they
// cost more than the product). Every (a-row, b-row) pair is computed: the CG tensors'
// pairs are 62-100% dense.
void r_edges(const Sparse& p, int64_t begin, int64_t end) {
  const int64_t ch = p.channels, cols = (p.db + LANES - 1) / LANES * LANES;
  std::vector<float> bT(static_cast<size_t>(ch * cols), 0.0f), P(static_cast<size_t>(p.da * cols));
  std::vector<float> Pb(static_cast<size_t>(p.da * cols * LANES), 0.0f);
  for (int64_t e0 = begin; e0 < end; e0 += LANES) {
    const int64_t n_edges = std::min<int64_t>(LANES, end - e0);
    for (int64_t l = 0; l < n_edges; ++l) {
      const int64_t e = e0 + l;
      const float* be = p.b + e * p.db * ch;
      const float* se = p.scale ? p.scale + e * ch : nullptr;
      for (int64_t k = 0; k < p.db; ++k)
        for (int64_t c = 0; c < ch; ++c)
          bT[c * cols + k] = se ? be[k * ch + c] * se[c] : be[k * ch + c];
      channel_blocks(cols, [&](int64_t c0, auto nv) {
        rows<nv()>(p.da, p.a + e * p.da * ch, ch, 1, ch, bT.data() + c0, cols, P.data() + c0,
                   cols, nullptr, nullptr);
      });
      for (int64_t q = 0; q < p.da * cols; ++q) Pb[q * LANES + l] = P[q];
    }
    for (int64_t o = 0; o < p.d_out; ++o) {
      vec acc = vec{};
      for (int64_t n = p.t0[o]; n < p.t0[o + 1]; ++n) {
        const int64_t q = p.t1[n];
        acc += splat(p.val[n]) * load(Pb.data() + (p.t2[q] * cols + p.t3[q]) * LANES);
      }
      for (int64_t l = 0; l < n_edges; ++l) p.out[(e0 + l) * p.d_out + o] = acc[l];
    }
  }
}

}  // namespace

extern "C" {

// x [E, d1, ch], v [E, R], w [E, ch], A [d1, R], C [d3, R] -> out [E, d3, ch];
// all contiguous float32, ch % LANES == 0. Edges split into `threads` contiguous ranges.
void tdn_cp_uvu_forward_f32(const float* x, const float* v, const float* w,
                            const float* A, const float* C, float* out, int64_t E,
                            int64_t d1, int64_t rank, int64_t d3, int64_t channels,
                            int64_t threads) {
  const Problem p{x, v, w, A, C, out, d1, rank, d3, channels};
  split_edges(E, threads, [&p](int64_t b, int64_t e) { cp_edges(p, b, e); });
}

// The sparse contraction (layouts above): a [E, da, ch]; b [E, db, ch] if b_channels
// else [E, db]; scale [E, ch] or null (S: scales the output; R: the channel terms);
// S only: with dot_out [E, ch] (zeros), also dot_out[e, c] = sum_o out[e, o, c] (before
// the scale) * dot_with[e, o, c], dot_with [E, d_out, ch]; out [E, d_out, ch] (S) or [E, d_out]
// (R, with b_channels). `groups`: the number of groups (S) or pairs (R). All contiguous
// float32 / int64, ch % LANES == 0.
void tdn_sparse_bilinear_f32(const float* a, const float* b, const float* scale,
                             const int64_t* t0, const int64_t* t1, const int64_t* t2,
                             const int64_t* t3, const float* val, float* out,
                             const float* dot_with, float* dot_out, int64_t E,
                             int64_t da, int64_t db, int64_t d_out, int64_t channels,
                             int64_t groups, int64_t b_channels, int64_t out_channels,
                             int64_t threads) {
  const Sparse p{a,  b,  scale, val, dot_with, out,   dot_out, t0,       t1,
                 t2, t3, E,     da,  db,       d_out, channels, groups};
  if (out_channels)
    split_edges(E, threads, [&p, b_channels](int64_t s, int64_t e) {
      s_edges(p, b_channels != 0, s, e);
    });
  else
    split_edges(E, threads, [&p](int64_t s, int64_t e) { r_edges(p, s, e); });
}

}  // extern "C"
