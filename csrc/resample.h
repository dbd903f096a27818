// Pillow-exact separable BICUBIC resampling on 8-bit data, plus the normalisation of DeepSeek-OCR.
//
// The arithmetic follows Pillow's ImagingResample (src/libImaging/Resample.c) term for term, so the
// result is bit-identical to PIL's Image.resize(size, BICUBIC) on "L" and "RGB" images:
//   * filter: bicubic convolution with a = -0.5, support 2, widened by the downscale factor
//     (antialiasing): support = 2 * max(in/out, 1), taps are evaluated at (x - center + 0.5) / filterscale;
//   * per output pixel the taps are normalised to sum 1 in double, then turned into fixed point with
//     22 fractional bits (round half away from zero);
//   * an accumulator starts at 1 << 21 (rounding), sums pixel * coefficient in int32, and is clipped
//     to 0..255 after an arithmetic shift by 22;
//   * two passes with that 8-bit rounding between them; horizontal first, except that Pillow >= 13
//     runs the vertical pass first when the height shrinks by more than twice as many pixels as the
//     width (vertical_first_pillow13; the Python side probes the installed Pillow and sets the rule).
// Only the data layout differs: the horizontal pass writes planar rows, and the vertical pass writes
// normalised values ((v / 255 - 0.5) / 0.5 in float32, then cast) straight into CHW output memory.
//
// Kernels come in a portable scalar form and an AVX2 form (x86-64, chosen at run time). Both are exact.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define DEEPENCODER_X86 1
#include <immintrin.h>
#endif

namespace deepencoder {

constexpr int kPrecisionBits = 22;  // Pillow: 32 - 8 - 2
constexpr int kRowPad = 64;         // bytes of zero padding after every scratch row (vector over-read)

// Pillow's bicubic_filter, a = -0.5.
inline double bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Fixed-point taps of one 1-D resize: output i reads input [start[i], start[i] + count[i]) with weights
// k[i * stride + t]; entries past count are zero up to stride (a multiple of 8), so vector kernels may
// read whole groups of 8 or pairs.
struct Coeffs {
  int in_size = 0, out_size = 0, stride = 0, max_count = 0;
  std::vector<int> start, count;
  std::vector<int32_t> k;
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for box (0, in_size), in the same operation order.
inline Coeffs precompute_coeffs(int in_size, int out_size) {
  Coeffs c;
  c.in_size = in_size;
  c.out_size = out_size;
  const float in0 = 0.f, in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  const int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.stride = (ksize + 7) & ~7;
  c.start.assign(out_size, 0);
  c.count.assign(out_size, 0);
  c.k.assign(static_cast<size_t>(out_size) * c.stride, 0);
  std::vector<double> w(ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      const double v = bicubic_filter((x + xmin - center + 0.5) * ss);
      w[x] = v;
      ww += v;
    }
    int32_t* k = &c.k[static_cast<size_t>(xx) * c.stride];
    for (int x = 0; x < xmax; ++x) {
      double v = w[x];
      if (ww != 0.0) v /= ww;
      k[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                   : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    c.start[xx] = xmin;
    c.count[xx] = xmax;
    c.max_count = std::max(c.max_count, xmax);
  }
  return c;
}

// Same size in and out: Pillow skips the pass; one tap of weight 1.0 is the exact identity.
inline Coeffs identity_coeffs(int n) {
  Coeffs c;
  c.in_size = c.out_size = n;
  c.stride = 8;
  c.max_count = 1;
  c.start.resize(n);
  c.count.assign(n, 1);
  c.k.assign(static_cast<size_t>(n) * 8, 0);
  for (int i = 0; i < n; ++i) {
    c.start[i] = i;
    c.k[static_cast<size_t>(i) * 8] = 1 << kPrecisionBits;
  }
  return c;
}

inline uint8_t clip8(int32_t ss) {
  const int32_t v = ss >> kPrecisionBits;  // arithmetic shift, as in Pillow
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// ---------------------------------------------------------------------------------------------------
// Output element types and the 256-entry normalisation tables.

enum class OutKind { F32 = 0, BF16 = 1, F16 = 2 };

inline size_t out_elem_size(OutKind k) { return k == OutKind::F32 ? 4 : 2; }

// torchvision ToTensor + Normalize(0.5, 0.5) in float32: (v / 255 - 0.5) / 0.5.
inline float normalise_u8(int v) {
  const float a = static_cast<float>(v) / 255.0f;
  return (a - 0.5f) * 2.0f;  // division by 0.5 is an exact doubling
}

inline uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Round to nearest even, as torch's float32 -> bfloat16 cast (finite inputs).
inline uint16_t float_to_bf16(float f) {
  const uint32_t b = float_bits(f);
  return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// Round to nearest even, as the IEEE float32 -> binary16 conversion (finite inputs).
inline uint16_t float_to_f16(float f) {
  const uint32_t b = float_bits(f);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int e = static_cast<int>((b >> 23) & 0xFF) - 127 + 15;
  uint32_t m = b & 0x7FFFFFu;
  if ((b & 0x7FFFFFFFu) == 0) return static_cast<uint16_t>(sign);
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7C00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    m |= 0x800000u;
    const int shift = 14 - e;
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (m >> 13);
  const uint32_t rem = m & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rolls into the exponent
  return static_cast<uint16_t>(sign | h);
}

struct NormTables {
  float f32[256];
  uint16_t bf16[256];
  uint16_t f16[256];
  NormTables() {
    for (int v = 0; v < 256; ++v) {
      f32[v] = normalise_u8(v);
      bf16[v] = float_to_bf16(f32[v]);
      f16[v] = float_to_f16(f32[v]);
    }
  }
};

inline const NormTables& norm_tables() {
  static const NormTables t;
  return t;
}

// Write `n` copies of the normalised value of byte v.
inline void fill_value(void* dst, size_t n, OutKind kind, int v) {
  const NormTables& t = norm_tables();
  if (kind == OutKind::F32) {
    std::fill_n(static_cast<float*>(dst), n, t.f32[v]);
  } else {
    std::fill_n(static_cast<uint16_t*>(dst), n, kind == OutKind::BF16 ? t.bf16[v] : t.f16[v]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Scalar kernels (portable, and the reference for the vector ones).

// Horizontal pass. src: one row of `pix` bytes per pixel (1: grey, 4: RGBX); writes `nplanes` planar
// rows of c.out_size bytes.
inline void hpass_scalar(const uint8_t* src, int pix, int nplanes, const Coeffs& c, uint8_t* const* dst) {
  for (int x = 0; x < c.out_size; ++x) {
    const int32_t* k = &c.k[static_cast<size_t>(x) * c.stride];
    const uint8_t* p = src + static_cast<size_t>(c.start[x]) * pix;
    const int cnt = c.count[x];
    for (int pl = 0; pl < nplanes; ++pl) {
      int32_t ss = 1 << (kPrecisionBits - 1);
      for (int t = 0; t < cnt; ++t) ss += p[t * pix + pl] * k[t];
      dst[pl][x] = clip8(ss);
    }
  }
}

// Vertical pass for one planar output row segment: out[i] = norm(clip8(sum_t rows[t][x0 + i] * k[t])).
inline void vpass_scalar(const uint8_t* const* rows, const int32_t* k, int cnt, int x0, int n, void* dst,
                         OutKind kind) {
  const NormTables& tab = norm_tables();
  for (int i = 0; i < n; ++i) {
    int32_t ss = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < cnt; ++t) ss += rows[t][x0 + i] * k[t];
    const uint8_t v = clip8(ss);
    if (kind == OutKind::F32) {
      static_cast<float*>(dst)[i] = tab.f32[v];
    } else {
      static_cast<uint16_t*>(dst)[i] = kind == OutKind::BF16 ? tab.bf16[v] : tab.f16[v];
    }
  }
}

// Vertical pass to bytes (vertical-first order), n bytes of interleaved rows.
inline void vpass_u8_scalar(const uint8_t* const* rows, const int32_t* k, int cnt, int64_t n, uint8_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    int32_t ss = 1 << (kPrecisionBits - 1);
    for (int t = 0; t < cnt; ++t) ss += rows[t][i] * k[t];
    dst[i] = clip8(ss);
  }
}

// Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many pixels
// as the width (ImagingResampleInner); older Pillow always runs the horizontal pass first. The order
// changes the 8-bit rounding between passes, so it is part of the contract.
inline bool vertical_first_pillow13(int64_t in_w, int64_t in_h, int64_t out_w, int64_t out_h) {
  return in_h > out_h && (in_h - out_h) > 2 * (in_w - out_w);
}

// ---------------------------------------------------------------------------------------------------
// AVX2 kernels. Integer products are exact (8-bit x 23-bit in int32), so they equal the scalar ones.

#ifdef DEEPENCODER_X86

inline bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}

// RGBX source -> three planes. Two taps per step: lanes [p_t (4 channels), p_t+1 (4 channels)].
__attribute__((target("avx2"))) inline void hpass_rgbx_avx2(const uint8_t* src, const Coeffs& c,
                                                           uint8_t* const* dst) {
  const __m256i dup = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  const __m128i half = _mm_set1_epi32(1 << (kPrecisionBits - 1));
  uint8_t* d0 = dst[0];
  uint8_t* d1 = dst[1];
  uint8_t* d2 = dst[2];
  for (int x = 0; x < c.out_size; ++x) {
    const int32_t* k = &c.k[static_cast<size_t>(x) * c.stride];
    const uint8_t* p = src + static_cast<size_t>(c.start[x]) * 4;
    const int cnt = c.count[x];
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    int t = 0;
    for (; t + 4 <= cnt; t += 4) {
      const __m128i px = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4 * t));
      const __m128i kw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(k + t));
      const __m256i w0 = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(kw), dup);
      const __m256i w1 = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(_mm_srli_si128(kw, 8)), dup);
      acc0 = _mm256_add_epi32(acc0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(px), w0));
      acc1 = _mm256_add_epi32(acc1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(px, 8)), w1));
    }
    for (; t < cnt; t += 2) {  // k[cnt] is zero when cnt is odd; the pixel read is padding
      const __m128i px = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 4 * t));
      const __m128i kw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(k + t));
      const __m256i w = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(kw), dup);
      acc0 = _mm256_add_epi32(acc0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(px), w));
    }
    const __m256i acc = _mm256_add_epi32(acc0, acc1);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_srai_epi32(_mm_add_epi32(s, half), kPrecisionBits);
    s = _mm_packs_epi32(s, s);
    s = _mm_packus_epi16(s, s);  // clamps to 0..255
    const uint32_t v = static_cast<uint32_t>(_mm_cvtsi128_si32(s));
    d0[x] = static_cast<uint8_t>(v);
    d1[x] = static_cast<uint8_t>(v >> 8);
    d2[x] = static_cast<uint8_t>(v >> 16);
  }
}

// Horizontal pass of 8 RGBX rows at once, vectorised across the rows (int32 lane j = row j), which
// needs no horizontal sums and no per-tap shuffles: about 1.2 instructions per tap and output pixel.
//   1. transpose: scratch[x * 32 + c * 8 + j] = rows[j][4 x + c] (8x8 dword transposes, byte shuffles);
//   2. per output x: acc_c[j] = sum_t k[t] * scratch[(start + t) * 32 + c * 8 + j];
//   3. clip, stage 8 outputs, and transpose 8x8 bytes back into dst[c][j][x0 .. x0 + 8).
// rows[j]: padded RGBX rows (readable to roundup(in_w, 8) pixels); scratch: (roundup(in_w, 8)) * 32
// bytes; dst[c * 8 + j]: planar output rows, writable to roundup(out_size, 8).
__attribute__((target("avx2"))) inline void hpass8_rgbx_avx2(const uint8_t* const* rows, int in_w,
                                                            const Coeffs& c, uint8_t* scratch,
                                                            uint8_t* const* dst) {
  const __m256i chan = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int x0 = 0; x0 < in_w; x0 += 8) {
    __m256i a[8], t[8], u[8];
    for (int j = 0; j < 8; ++j) a[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[j] + 4 * x0));
    for (int j = 0; j < 8; j += 2) {
      t[j] = _mm256_unpacklo_epi32(a[j], a[j + 1]);
      t[j + 1] = _mm256_unpackhi_epi32(a[j], a[j + 1]);
    }
    for (int h = 0; h < 8; h += 4) {  // rows h..h+3
      u[h + 0] = _mm256_unpacklo_epi64(t[h], t[h + 2]);      // pixels 0 | 4
      u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);      // 1 | 5
      u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);  // 2 | 6
      u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);  // 3 | 7
    }
    for (int q = 0; q < 4; ++q) {
      const __m256i lo = _mm256_permute2x128_si256(u[q], u[q + 4], 0x20);  // pixel q, rows 0..7
      const __m256i hi = _mm256_permute2x128_si256(u[q], u[q + 4], 0x31);  // pixel q + 4
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(scratch + (x0 + q) * 32),
                          _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(lo, chan), order));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(scratch + (x0 + q + 4) * 32),
                          _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(hi, chan), order));
    }
  }
  const __m256i half = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  alignas(32) uint8_t stage[8 * 32];
  for (int x0 = 0; x0 < c.out_size; x0 += 8) {
    const int nx = std::min(8, c.out_size - x0);
    for (int xi = 0; xi < nx; ++xi) {
      const int x = x0 + xi;
      const int32_t* k = &c.k[static_cast<size_t>(x) * c.stride];
      const uint8_t* p = scratch + static_cast<size_t>(c.start[x]) * 32;
      const int cnt = c.count[x];
      __m256i ar = half, ag = half, ab = half;
      for (int tp = 0; tp < cnt; ++tp, p += 32) {
        const __m256i w = _mm256_set1_epi32(k[tp]);
        ar = _mm256_add_epi32(ar, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), w));
        ag = _mm256_add_epi32(ag, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))), w));
        ab = _mm256_add_epi32(ab, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 16))), w));
      }
      ar = _mm256_srai_epi32(ar, kPrecisionBits);
      ag = _mm256_srai_epi32(ag, kPrecisionBits);
      ab = _mm256_srai_epi32(ab, kPrecisionBits);
      // lanes: [r0-3 g0-3 b0-3 b0-3 | r4-7 g4-7 b4-7 b4-7] -> [R8 G8 B8 B8]
      const __m256i b8 = _mm256_packus_epi16(_mm256_packs_epi32(ar, ag), _mm256_packs_epi32(ab, ab));
      _mm256_store_si256(reinterpret_cast<__m256i*>(stage + xi * 32), _mm256_permutevar8x32_epi32(b8, order));
    }
    for (int ch = 0; ch < 3; ++ch) {  // 8x8 byte transpose: stage[xi][ch][j] -> dst[ch][j][x0 + xi]
      __m128i q[8];
      for (int xi = 0; xi < 8; ++xi) q[xi] = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(stage + xi * 32 + ch * 8));
      const __m128i m01 = _mm_unpacklo_epi8(q[0], q[1]), m23 = _mm_unpacklo_epi8(q[2], q[3]);
      const __m128i m45 = _mm_unpacklo_epi8(q[4], q[5]), m67 = _mm_unpacklo_epi8(q[6], q[7]);
      const __m128i n0 = _mm_unpacklo_epi16(m01, m23), n1 = _mm_unpackhi_epi16(m01, m23);
      const __m128i n2 = _mm_unpacklo_epi16(m45, m67), n3 = _mm_unpackhi_epi16(m45, m67);
      const __m128i o[4] = {_mm_unpacklo_epi32(n0, n2), _mm_unpackhi_epi32(n0, n2),
                            _mm_unpacklo_epi32(n1, n3), _mm_unpackhi_epi32(n1, n3)};
      for (int j = 0; j < 8; j += 2) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(dst[ch * 8 + j] + x0), o[j / 2]);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(dst[ch * 8 + j + 1] + x0), _mm_unpackhi_epi64(o[j / 2], o[j / 2]));
      }
    }
  }
}

// Grey source -> one plane. Eight taps per step, horizontal sum at the end.
__attribute__((target("avx2"))) inline void hpass_grey_avx2(const uint8_t* src, const Coeffs& c,
                                                           uint8_t* dst) {
  for (int x = 0; x < c.out_size; ++x) {
    const int32_t* k = &c.k[static_cast<size_t>(x) * c.stride];
    const uint8_t* p = src + c.start[x];
    const int cnt = c.count[x];
    __m256i acc = _mm256_setzero_si256();
    for (int t = 0; t < cnt; t += 8) {
      const __m256i px = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + t)));
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + t));
      acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, w));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    dst[x] = clip8(_mm_cvtsi128_si32(s) + (1 << (kPrecisionBits - 1)));
  }
}

// Eight clipped int32 values -> normalised output (float32 arithmetic identical to normalise_u8).
__attribute__((target("avx2,f16c"))) inline void store_norm8(__m256i acc, void* dst, OutKind kind) {
  __m256i v = _mm256_srai_epi32(acc, kPrecisionBits);
  v = _mm256_min_epi32(_mm256_max_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(255));
  __m256 f = _mm256_div_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(255.0f));
  f = _mm256_mul_ps(_mm256_sub_ps(f, _mm256_set1_ps(0.5f)), _mm256_set1_ps(2.0f));
  if (kind == OutKind::F32) {
    _mm256_storeu_ps(static_cast<float*>(dst), f);
  } else if (kind == OutKind::F16) {
    _mm_storeu_si128(static_cast<__m128i*>(dst), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
  } else {
    __m256i b = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    b = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), _MM_SHUFFLE(3, 1, 2, 0));
    _mm_storeu_si128(static_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
  }
}

// Vertical pass, 16 outputs per step; rows must be readable up to x0 + roundup(n, 16) (scratch padding).
__attribute__((target("avx2,f16c"))) inline void vpass_avx2(const uint8_t* const* rows, const int32_t* k,
                                                           int cnt, int x0, int n, void* dst,
                                                           OutKind kind) {
  const size_t es = out_elem_size(kind);
  char* out = static_cast<char*>(dst);
  const __m256i half = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  int i = 0;
  for (; i < n; i += 16) {
    __m256i a0 = half, a1 = half;
    for (int t = 0; t < cnt; ++t) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[t] + x0 + i));
      const __m256i w = _mm256_set1_epi32(k[t]);
      a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(b), w));
      a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)), w));
    }
    if (i + 16 <= n) {
      store_norm8(a0, out + i * es, kind);
      store_norm8(a1, out + (i + 8) * es, kind);
    } else {  // tail: never write past the caller's segment
      alignas(32) char tmp[64];
      store_norm8(a0, tmp, kind);
      store_norm8(a1, tmp + 8 * es, kind);
      std::memcpy(out + i * es, tmp, (n - i) * es);
    }
  }
}

// Vertical pass to bytes (vertical-first order): out[i] = clip8(sum_t rows[t][i] * k[t]), n bytes.
// Rows must be readable up to roundup(n, 16) (scratch padding).
__attribute__((target("avx2"))) inline void vpass_u8_avx2(const uint8_t* const* rows, const int32_t* k,
                                                         int cnt, int64_t n, uint8_t* dst) {
  const __m256i half = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  for (int64_t i = 0; i < n; i += 16) {
    __m256i a0 = half, a1 = half;
    for (int t = 0; t < cnt; ++t) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[t] + i));
      const __m256i w = _mm256_set1_epi32(k[t]);
      a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(b), w));
      a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)), w));
    }
    a0 = _mm256_srai_epi32(a0, kPrecisionBits);
    a1 = _mm256_srai_epi32(a1, kPrecisionBits);
    // packs keeps lanes within 128-bit halves: order is a0[0:4] a1[0:4] a0[4:8] a1[4:8]; fix with permute.
    __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a0, a1), _MM_SHUFFLE(3, 1, 2, 0));
    const __m128i b8 = _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
    if (i + 16 <= n) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), b8);
    } else {
      alignas(16) uint8_t tmp[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(tmp), b8);
      std::memcpy(dst + i, tmp, static_cast<size_t>(n - i));
    }
  }
}

// RGB (3 bytes per pixel, contiguous) -> RGBX, four pixels per shuffle.
__attribute__((target("avx2"))) inline int expand_rgb_rgbx_avx2(const uint8_t* src, int w, uint8_t* dst) {
  const __m128i shuf = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
  int x = 0;
  for (; x + 6 <= w; x += 4) {  // the 16-byte load stays inside the row
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * x));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 4 * x), _mm_shuffle_epi8(v, shuf));
  }
  return x;
}

#else
inline bool cpu_has_avx2() { return false; }
#endif

}  // namespace deepencoder
