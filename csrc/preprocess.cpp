// deepencoder._C: DeepSeek-OCR / DeepSeek-OCR 2 image preprocessing on the host, multi-threaded, GIL
// released.
//
// For each image (uint8 or uint16 HxW / HxWxC numpy array, C in {1, 3, 4}, any strides) and mode, it
// writes the normalised CHW pixels of every view into caller-provided buffers (numpy float32/float16,
// or torch float32/bfloat16/float16 CPU tensors, C-contiguous):
//   tiny/small:  plain resize to S x S (PIL BICUBIC with antialiasing; see resample.h);
//   base/large:  ImageOps.pad: aspect-preserving fit into S x S, centred on fill 127;
//   gundam:      the 1024 padded view, plus, for images larger than the tile T on a side, a (cols, rows)
//                grid: the image resized to (T cols, T rows) and cut into T x T tiles, row-major.
// Family "ocr1" (DeepSeek-OCR): all five modes, T = 640, MAX 9 by default. Family "ocr2" (DeepSeek-OCR 2):
// gundam and base (the padded 1024 view alone), T = 768, MAX 6 by default.
// Input conventions match deepencoder/preprocess.py: a 4th channel (alpha) is dropped as
// PIL's convert("RGB") does; one channel is grey (replicated to RGB); 16-bit values v become
// round(v / 257) = (v + 128) / 257.
//
// Work is split into tasks of output-row bands; each task runs the first resampling pass over only
// the source rows its band needs (a sliding window of rows), so bands are independent and every output
// value equals the single-threaded one. With AVX2 the horizontal pass handles 8 source rows per call.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "resample.h"

namespace py = pybind11;
using namespace deepencoder;

namespace {

constexpr int kFill = 127;  // upstream: int(0.5 * 255)

bool g_use_simd = cpu_has_avx2();
bool g_pillow13_order = true;  // pass order of Pillow >= 13; the Python side probes the installed Pillow


// ---------------------------------------------------------------------------------------------------
// Families, modes and geometry (mirrors deepencoder/modes.py).

struct ModeSpec {
  const char* family;
  const char* name;
  int size;
  bool pad;
  bool crop;
  int tile, min_tiles, max_tiles;  // Gundam tile side and default tile-count bounds of the family
};

const ModeSpec kModes[] = {
    {"ocr1", "tiny", 512, false, false, 640, 2, 9},
    {"ocr1", "small", 640, false, false, 640, 2, 9},
    {"ocr1", "base", 1024, true, false, 640, 2, 9},
    {"ocr1", "large", 1280, true, false, 640, 2, 9},
    {"ocr1", "gundam", 1024, true, true, 640, 2, 9},
    {"ocr2", "gundam", 1024, true, true, 768, 2, 6},
    {"ocr2", "base", 1024, true, false, 768, 2, 6},
};

std::string lower(const std::string& s) {
  std::string low;
  for (char ch : s) low.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
  return low;
}

std::string check_family(const std::string& family) {
  const std::string f = lower(family);
  if (f != "ocr1" && f != "ocr2")
    throw py::value_error("unknown model family '" + family + "': choose one of ocr1, ocr2");
  return f;
}

const ModeSpec& get_mode(const std::string& name, const std::string& family) {
  const std::string f = check_family(family), low = lower(name);
  std::string names;
  for (const auto& m : kModes) {
    if (f != m.family) continue;
    if (low == m.name) return m;
    names += std::string(names.empty() ? "" : ", ") + m.name;
  }
  throw py::value_error("unknown mode '" + name + "' for model family '" + f + "': choose one of " + names);
}

// Port of modes.choose_tile_grid. Candidates (i, j) with min_num <= i*j <= max_num in increasing i*j (i
// ascending within a product; Python's set order differs there, but no tie can be decided by it: two
// grids with the same product always have a third candidate strictly between their ratios, except
// (1, 2) and (2, 1), which both orders visit in the same order). Tested exhaustively against Python.
std::pair<int, int> tile_grid(int64_t width, int64_t height, int max_num, int tile, int min_num) {
  if (width <= 0 || height <= 0)
    throw py::value_error("image size must be positive, got " + std::to_string(width) + "x" +
                          std::to_string(height));
  if (max_num < min_num)
    throw py::value_error("max tiles " + std::to_string(max_num) + " is below the minimum " + std::to_string(min_num));
  if (width <= tile && height <= tile) return {1, 1};
  const double aspect = static_cast<double>(width) / static_cast<double>(height);
  const double area = static_cast<double>(width) * static_cast<double>(height);
  double best_diff = INFINITY;
  std::pair<int, int> best{1, 1};
  // Every (i, j) with min_num <= i*j <= max_num, O(max log max), visited by (i*j, i).
  std::vector<std::pair<int, int>> cands;
  for (int i = 1; i <= max_num; ++i)
    for (int j = std::max(1, (min_num + i - 1) / i); j <= max_num / i; ++j) cands.push_back({i, j});
  std::sort(cands.begin(), cands.end(), [](const std::pair<int, int>& a, const std::pair<int, int>& b) {
    const int64_t pa = int64_t(a.first) * a.second, pb = int64_t(b.first) * b.second;
    return pa != pb ? pa < pb : a.first < b.first;
  });
  for (const auto& [i, j] : cands) {
    const double diff = std::fabs(aspect - static_cast<double>(i) / j);
    if (diff < best_diff) {
      best_diff = diff;
      best = {i, j};
    } else if (diff == best_diff && area > 0.5 * tile * tile * i * j) {
      best = {i, j};
    }
  }
  return best;
}

// Python's round() on a double: ties to even (nearbyint in the default rounding mode).
int py_round(double v) { return static_cast<int>(std::nearbyint(v)); }

// ImageOps.contain + ImageOps.pad (centering 0.5): resized size and paste offset inside S x S.
void pad_geometry(int64_t w, int64_t h, int S, int* rw, int* rh, int* px, int* py) {
  *rw = S;
  *rh = S;
  const double im_ratio = static_cast<double>(w) / static_cast<double>(h);
  const double dest_ratio = 1.0;
  if (im_ratio != dest_ratio) {
    if (im_ratio > dest_ratio)
      *rh = py_round(static_cast<double>(h) / static_cast<double>(w) * S);
    else
      *rw = py_round(static_cast<double>(w) / static_cast<double>(h) * S);
  }
  *px = *py = 0;
  if (*rw != S) *px = py_round((S - *rw) * 0.5);
  else if (*rh != S) *py = py_round((S - *rh) * 0.5);
}

// ---------------------------------------------------------------------------------------------------
// Source image access (stride-aware, 8- or 16-bit).

struct Source {
  const uint8_t* data = nullptr;
  int64_t h = 0, w = 0;
  int c = 0;           // channels in the array: 1, 3 or 4
  int esize = 1;       // bytes per element: 1 or 2
  int64_t sy = 0, sx = 0, sc = 0;  // strides in bytes (may be negative)
  bool grey() const { return c == 1; }
};

bool pass_vertical_first(const Source& s, int rw, int rh) {
  return g_pillow13_order && rw != s.w && rh != s.h && vertical_first_pillow13(s.w, s.h, rw, rh);
}

inline uint8_t read8(const Source& s, const uint8_t* p) {
  if (s.esize == 1) return *p;
  uint16_t v;
  std::memcpy(&v, p, 2);
  return static_cast<uint8_t>((static_cast<uint32_t>(v) + 128u) / 257u);
}

// Source row y -> grey bytes (1 per pixel) or RGBX (4 per pixel, X = 0 or dropped alpha).
void load_row(const Source& s, int64_t y, uint8_t* out) {
  const uint8_t* row = s.data + y * s.sy;
  const int64_t w = s.w;
  if (s.grey()) {
    if (s.esize == 1 && s.sx == 1) {
      std::memcpy(out, row, w);
      return;
    }
    for (int64_t x = 0; x < w; ++x) out[x] = read8(s, row + x * s.sx);
    return;
  }
  if (s.esize == 1 && s.sc == 1) {
    if (s.c == 4 && s.sx == 4) {  // alpha lane rides along and is never read back
      std::memcpy(out, row, 4 * w);
      return;
    }
    if (s.c == 3 && s.sx == 3) {
      int64_t x = 0;
#ifdef DEEPENCODER_X86
      if (g_use_simd) x = expand_rgb_rgbx_avx2(row, static_cast<int>(w), out);
#endif
      for (; x < w; ++x) {
        out[4 * x + 0] = row[3 * x + 0];
        out[4 * x + 1] = row[3 * x + 1];
        out[4 * x + 2] = row[3 * x + 2];
        out[4 * x + 3] = 0;
      }
      return;
    }
  }
  for (int64_t x = 0; x < w; ++x) {
    const uint8_t* p = row + x * s.sx;
    out[4 * x + 0] = read8(s, p);
    out[4 * x + 1] = read8(s, p + s.sc);
    out[4 * x + 2] = read8(s, p + 2 * s.sc);
    out[4 * x + 3] = 0;
  }
}

// ---------------------------------------------------------------------------------------------------
// Views and tasks.

struct OutBuf {
  char* ptr = nullptr;
  OutKind kind = OutKind::F32;
};

// One resized view placed on a canvas. Canvas = S x S for the global view (resized image at (px, py),
// rest fill), or the resized image itself for Gundam tiles (cut into tile x tile pieces).
struct View {
  const Source* src = nullptr;
  int rw = 0, rh = 0, px = 0, py = 0, canvas_w = 0, canvas_h = 0;
  bool tiled = false;
  bool vfirst = false;  // pass order, see vertical_first_pillow13
  int cols = 1;
  int tile = 0;  // side of one Gundam tile (tiled views only)
  OutBuf out;
  std::shared_ptr<Coeffs> hc, vc;
};

struct Task {
  int view;
  int y0, y1;  // canvas rows
};

// Destination of channel `ch` for canvas row y, column x.
inline char* dst_ptr(const View& v, int ch, int64_t y, int64_t x) {
  const size_t es = out_elem_size(v.out.kind);
  int64_t off;
  if (!v.tiled) {
    off = (static_cast<int64_t>(ch) * v.canvas_h + y) * v.canvas_w + x;
  } else {
    const int64_t t = v.tile;
    const int64_t tidx = (y / t) * v.cols + x / t;
    off = ((tidx * 3 + ch) * t + y % t) * t + x % t;
  }
  return v.out.ptr + off * static_cast<int64_t>(es);
}

void fill_span(const View& v, int64_t y, int64_t x0, int64_t n) {
  if (n <= 0) return;
  for (int ch = 0; ch < 3; ++ch) fill_value(dst_ptr(v, ch, y, x0), n, v.out.kind, kFill);
}

// Vertical pass + normalisation of canvas row y from planar 8-bit rows: for each segment and plane,
// rows_of(pl) gives the tap rows of that plane; grey images are written once and copied to G and B.
template <class RowsOf>
void emit_row(const View& v, int y, int nplanes, const int32_t* k, int cnt, RowsOf rows_of) {
  const size_t es = out_elem_size(v.out.kind);
  const int seg = v.tiled ? v.tile : v.rw;  // one segment per tile column
  for (int x0 = 0; x0 < v.rw; x0 += seg) {
    const int n = std::min(seg, v.rw - x0);
    for (int pl = 0; pl < nplanes; ++pl) {
      const uint8_t* const* rows = rows_of(pl);
      char* dst = dst_ptr(v, pl, y, v.px + x0);
#ifdef DEEPENCODER_X86
      if (g_use_simd) vpass_avx2(rows, k, cnt, x0, n, dst, v.out.kind);
      else
#endif
        vpass_scalar(rows, k, cnt, x0, n, dst, v.out.kind);
    }
    if (nplanes == 1) {
      const char* d0 = dst_ptr(v, 0, y, v.px + x0);
      std::memcpy(dst_ptr(v, 1, y, v.px + x0), d0, n * es);
      std::memcpy(dst_ptr(v, 2, y, v.px + x0), d0, n * es);
    }
  }
}

inline void hpass(const uint8_t* src, int nplanes, const Coeffs& hc, uint8_t* const* planes) {
#ifdef DEEPENCODER_X86
  if (g_use_simd) {
    if (nplanes == 3) hpass_rgbx_avx2(src, hc, planes);
    else hpass_grey_avx2(src, hc, planes[0]);
    return;
  }
#endif
  hpass_scalar(src, nplanes == 3 ? 4 : 1, nplanes, hc, planes);
}

void run_task(const View& v, const Task& task) {
  const int y_img0 = std::max(task.y0, v.py), y_img1 = std::min(task.y1, v.py + v.rh);
  for (int y = task.y0; y < task.y1; ++y) {
    if (y < y_img0 || y >= y_img1 || v.rw == 0) {
      fill_span(v, y, 0, v.canvas_w);
    } else {
      fill_span(v, y, 0, v.px);
      fill_span(v, y, v.px + v.rw, v.canvas_w - v.px - v.rw);
    }
  }
  if (y_img0 >= y_img1 || v.rw == 0) return;

  const Source& s = *v.src;
  const Coeffs& hc = *v.hc;
  const Coeffs& vc = *v.vc;
  const int nplanes = s.grey() ? 1 : 3;
  const int pix = s.grey() ? 1 : 4;
  const size_t plane_bytes = static_cast<size_t>(v.rw) + kRowPad;
  const size_t src_bytes = static_cast<size_t>(s.w) * pix + kRowPad;
  const int cap = std::max(vc.max_count, 1);
  std::vector<const uint8_t*> rows(cap);
  // Sliding window over source rows: the taps of consecutive output rows start at non-decreasing rows,
  // and one output row never needs more than `cap` of them, so slot (row % cap) is never overwritten
  // while still in use.
  int64_t next_src = -1;

#ifdef DEEPENCODER_X86
  if (!v.vfirst && g_use_simd && nplanes == 3) {
    // Horizontal first, 8 source rows per horizontal call (hpass8_rgbx_avx2). The ring holds groups of
    // 8 rows aligned to multiples of 8; an output row's taps span at most cap / 8 + 2 groups.
    const int groups = (cap + 7) / 8 + 1;
    const size_t group_bytes = plane_bytes * 24;
    std::vector<uint8_t> ring(group_bytes * groups, 0);
    std::vector<uint8_t> src_rows(src_bytes * 8, 0);
    std::vector<uint8_t> scratch((static_cast<size_t>(s.w) + 8) * 32 + kRowPad, 0);
    const uint8_t* in8[8];
    uint8_t* out24[24];
    int64_t next_group = -1;
    for (int y = y_img0; y < y_img1; ++y) {
      const int r = y - v.py;
      const int ymin = vc.start[r], cnt = vc.count[r];
      const int64_t g_last = (ymin + cnt - 1) / 8;
      if (next_group < ymin / 8) next_group = ymin / 8;
      for (; next_group <= g_last; ++next_group) {
        for (int j = 0; j < 8; ++j) {
          const int64_t sy = std::min<int64_t>(next_group * 8 + j, s.h - 1);  // past the end: unused copy
          load_row(s, sy, src_rows.data() + j * src_bytes);
          in8[j] = src_rows.data() + j * src_bytes;
        }
        uint8_t* slot = ring.data() + (next_group % groups) * group_bytes;
        for (int i = 0; i < 24; ++i) out24[i] = slot + i * plane_bytes;
        hpass8_rgbx_avx2(in8, static_cast<int>(s.w), hc, scratch.data(), out24);
      }
      emit_row(v, y, 3, &vc.k[static_cast<size_t>(r) * vc.stride], cnt, [&](int pl) {
        for (int t = 0; t < cnt; ++t) {
          const int64_t sy = ymin + t;
          rows[t] = ring.data() + ((sy / 8) % groups) * group_bytes + (pl * 8 + sy % 8) * plane_bytes;
        }
        return rows.data();
      });
    }
    return;
  }
#endif

  if (!v.vfirst) {
    // Horizontal first (Pillow's classic order): the ring holds horizontally resampled planar rows.
    const size_t slot_bytes = plane_bytes * nplanes;
    std::vector<uint8_t> ring(slot_bytes * cap, 0);
    std::vector<uint8_t> src_row(src_bytes, 0);
    for (int y = y_img0; y < y_img1; ++y) {
      const int r = y - v.py;
      const int ymin = vc.start[r], cnt = vc.count[r];
      if (next_src < ymin) next_src = ymin;
      for (; next_src < ymin + cnt; ++next_src) {
        uint8_t* slot = ring.data() + (next_src % cap) * slot_bytes;
        uint8_t* planes[3] = {slot, slot + plane_bytes, slot + 2 * plane_bytes};
        load_row(s, next_src, src_row.data());
        hpass(src_row.data(), nplanes, hc, planes);
      }
      emit_row(v, y, nplanes, &vc.k[static_cast<size_t>(r) * vc.stride], cnt, [&](int pl) {
        for (int t = 0; t < cnt; ++t) rows[t] = ring.data() + ((ymin + t) % cap) * slot_bytes + pl * plane_bytes;
        return rows.data();
      });
    }
    return;
  }

  // Vertical first: the ring holds source rows; each output row is one vertical pass at source width,
  // then one horizontal pass, then normalisation (an identity tap).
  std::vector<uint8_t> ring(src_bytes * cap, 0);
  std::vector<uint8_t> vrow(src_bytes, 0);
  std::vector<uint8_t> hrows(plane_bytes * nplanes, 0);
  uint8_t* planes[3] = {hrows.data(), hrows.data() + plane_bytes, hrows.data() + 2 * plane_bytes};
  const int32_t ident = 1 << kPrecisionBits;
  const uint8_t* one[1];
  for (int y = y_img0; y < y_img1; ++y) {
    const int r = y - v.py;
    const int ymin = vc.start[r], cnt = vc.count[r];
    if (next_src < ymin) next_src = ymin;
    for (; next_src < ymin + cnt; ++next_src) load_row(s, next_src, ring.data() + (next_src % cap) * src_bytes);
    for (int t = 0; t < cnt; ++t) rows[t] = ring.data() + ((ymin + t) % cap) * src_bytes;
    const int32_t* k = &vc.k[static_cast<size_t>(r) * vc.stride];
#ifdef DEEPENCODER_X86
    if (g_use_simd) vpass_u8_avx2(rows.data(), k, cnt, s.w * pix, vrow.data());
    else
#endif
      vpass_u8_scalar(rows.data(), k, cnt, s.w * pix, vrow.data());
    hpass(vrow.data(), nplanes, hc, planes);
    emit_row(v, y, nplanes, &ident, 1, [&](int pl) {
      one[0] = planes[pl];
      return one;
    });
  }
}

// Runs tasks on `threads` workers (the calling thread is one of them). Any exception stops the run
// and is rethrown on the caller.
void run_all(const std::vector<View>& views, const std::vector<Task>& tasks, int threads) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&]() {
    for (;;) {
      if (failed.load()) return;
      const size_t i = next.fetch_add(1);
      if (i >= tasks.size()) return;
      try {
        run_task(views[tasks[i].view], tasks[i]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
        failed.store(true);
      }
    }
  };
  const int n = std::max(1, std::min<int>(threads, static_cast<int>(tasks.size())));
  std::vector<std::thread> pool;
  pool.reserve(n - 1);
  for (int i = 1; i < n; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// ---------------------------------------------------------------------------------------------------
// Python-facing checks.

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

bool numpy_native(const py::dtype& dt) { return dt.attr("isnative").cast<bool>(); }

Source make_source(const py::handle& obj, size_t idx) {
  const std::string where = "image " + std::to_string(idx);
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(where + ": expected a numpy array, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const py::dtype dt = a.dtype();
  const std::string dts = py::str(dt).cast<std::string>();
  if (dt.kind() != 'u' || (dt.itemsize() != 1 && dt.itemsize() != 2) || !numpy_native(dt))
    throw py::type_error(where + ": unsupported dtype " + dts +
                         " (expected uint8 or native-endian uint16)");
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  if (a.ndim() != 2 && a.ndim() != 3)
    throw py::value_error(where + ": expected an HxW or HxWxC array, got shape " + shape_str(shape));
  Source s;
  s.h = a.shape(0);
  s.w = a.shape(1);
  s.c = a.ndim() == 3 ? static_cast<int>(a.shape(2)) : 1;
  if (s.c != 1 && s.c != 3 && s.c != 4)
    throw py::value_error(where + ": expected 1, 3 or 4 channels, got shape " + shape_str(shape));
  if (s.h <= 0 || s.w <= 0) throw py::value_error(where + ": zero-size image, shape " + shape_str(shape));
  // Kernels index pixels of one row with int (4 bytes per pixel): keep sides below 2^28.
  if (s.h >= (int64_t(1) << 28) || s.w >= (int64_t(1) << 28))
    throw py::value_error(where + ": image too large (a side of 2^28 pixels or more), shape " + shape_str(shape));
  s.esize = static_cast<int>(dt.itemsize());
  s.data = static_cast<const uint8_t*>(a.data());
  s.sy = a.strides(0);
  s.sx = a.strides(1);
  s.sc = a.ndim() == 3 ? a.strides(2) : 0;
  return s;
}

OutBuf make_out(const py::handle& obj, const std::vector<int64_t>& want, const std::string& where) {
  OutBuf ob;
  std::vector<int64_t> shape;
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    const py::dtype dt = a.dtype();
    if (dt.kind() != 'f' || (dt.itemsize() != 4 && dt.itemsize() != 2) || !numpy_native(dt))
      throw py::type_error(where + ": unsupported dtype " + py::str(dt).cast<std::string>() +
                           " (numpy buffers must be float32 or float16; torch tensors may also be bfloat16)");
    ob.kind = dt.itemsize() == 4 ? OutKind::F32 : OutKind::F16;
    shape.assign(a.shape(), a.shape() + a.ndim());
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(where + ": buffer must be C-contiguous");
    if (!a.writeable()) throw py::value_error(where + ": buffer is read-only");
    if (shape != want)
      throw py::value_error(where + ": expected shape " + shape_str(want) + ", got " + shape_str(shape));
    ob.ptr = static_cast<char*>(a.mutable_data());
    return ob;
  }
  if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "is_contiguous") && py::hasattr(obj, "dtype")) {
    const std::string dts = py::str(obj.attr("dtype")).cast<std::string>();
    if (dts == "torch.float32") ob.kind = OutKind::F32;
    else if (dts == "torch.bfloat16") ob.kind = OutKind::BF16;
    else if (dts == "torch.float16") ob.kind = OutKind::F16;
    else
      throw py::type_error(where + ": unsupported dtype " + dts +
                           " (expected torch.float32, torch.bfloat16 or torch.float16)");
    const std::string dev = py::str(obj.attr("device").attr("type")).cast<std::string>();
    if (dev != "cpu") throw py::value_error(where + ": tensor must be on the CPU, got device " + dev);
    if (!obj.attr("is_contiguous")().cast<bool>())
      throw py::value_error(where + ": tensor must be contiguous");
    for (auto d : obj.attr("shape")) shape.push_back(d.cast<int64_t>());
    if (shape != want)
      throw py::value_error(where + ": expected shape " + shape_str(want) + ", got " + shape_str(shape));
    ob.ptr = reinterpret_cast<char*>(obj.attr("data_ptr")().cast<uintptr_t>());
    if (!ob.ptr) throw py::value_error(where + ": null data pointer");
    return ob;
  }
  throw py::type_error(where + ": expected a numpy array or a torch tensor, got " +
                       py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
}

// Caches coefficient tables within one call (many pages of one size share them).
struct CoeffCache {
  std::vector<std::pair<std::pair<int64_t, int64_t>, std::shared_ptr<Coeffs>>> items;
  std::shared_ptr<Coeffs> get(int64_t in, int64_t out) {
    for (auto& it : items)
      if (it.first.first == in && it.first.second == out) return it.second;
    auto c = std::make_shared<Coeffs>(in == out ? identity_coeffs(static_cast<int>(in))
                                                : precompute_coeffs(static_cast<int>(in), static_cast<int>(out)));
    items.push_back({{in, out}, c});
    return c;
  }
};

// The family's Gundam MAX when None, else a checked value. The Python side applies the configurable
// policy limit (modes.max_tiles_limit); this ceiling only keeps direct calls from building huge tables.
constexpr int kMaxTilesCeiling = 4096;

int resolve_max_tiles(const py::object& max_tiles, const ModeSpec& gundam) {
  if (max_tiles.is_none()) return gundam.max_tiles;
  if (!py::isinstance<py::int_>(max_tiles) || py::isinstance<py::bool_>(max_tiles))
    throw py::type_error("max_tiles must be an integer or None, got " + py::repr(max_tiles).cast<std::string>());
  if (max_tiles > py::int_(kMaxTilesCeiling))  // compared as Python ints: no overflow on the cast below
    throw py::value_error("max_tiles must be <= " + std::to_string(kMaxTilesCeiling) + ", got " +
                          py::repr(max_tiles).cast<std::string>());
  const int v = max_tiles.cast<int>();
  if (v < gundam.min_tiles)
    throw py::value_error("max_tiles must be >= " + std::to_string(gundam.min_tiles) + ", got " + std::to_string(v));
  return v;
}

// preprocess_into(images, modes, max_tiles, global_outs, tile_outs, grids=None, threads=1, family="ocr1")
// -> grids
py::list preprocess_into(const py::sequence& images, const py::sequence& modes, const py::object& max_tiles_obj,
                         const py::sequence& global_outs, const py::sequence& tile_outs,
                         const py::object& grids, int threads, const std::string& family) {
  const size_t n = py::len(images);
  if (py::len(modes) != n || py::len(global_outs) != n || py::len(tile_outs) != n)
    throw py::value_error("images, modes, global_outs and tile_outs must have the same length");
  if (!grids.is_none() && py::len(grids) != n)
    throw py::value_error("grids must be None or have one entry per image");
  if (threads < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
  const int max_tiles = resolve_max_tiles(max_tiles_obj, get_mode("gundam", family));

  std::vector<Source> sources(n);
  std::vector<py::object> keep;  // keeps arrays alive while the GIL is released
  keep.reserve(3 * n);
  std::vector<View> views;
  py::list out_grids;
  CoeffCache cache;
  for (size_t i = 0; i < n; ++i) {
    py::object img = images[i];
    keep.push_back(img);
    sources[i] = make_source(img, i);
    const Source& s = sources[i];
    const ModeSpec& m = get_mode(py::str(modes[i]).cast<std::string>(), family);
    std::pair<int, int> grid{1, 1};
    if (m.crop) {
      grid = tile_grid(s.w, s.h, max_tiles, m.tile, m.min_tiles);
      if (!grids.is_none()) {
        auto g = py::cast<std::pair<int, int>>(py::sequence(grids)[i]);
        if (g.first < 1 || g.second < 1 || g.first * g.second > max_tiles ||
            (g.first * g.second == 1) != (grid.first * grid.second == 1))
          throw py::value_error("image " + std::to_string(i) + ": invalid grid (" + std::to_string(g.first) +
                                ", " + std::to_string(g.second) + ")");
        grid = g;
      }
    }
    out_grids.append(py::make_tuple(grid.first, grid.second));

    View gv;
    gv.src = &sources[i];
    gv.canvas_w = gv.canvas_h = m.size;
    if (m.pad) pad_geometry(s.w, s.h, m.size, &gv.rw, &gv.rh, &gv.px, &gv.py);
    else gv.rw = gv.rh = m.size;
    py::object gout = global_outs[i];
    keep.push_back(gout);
    gv.out = make_out(gout, {3, m.size, m.size}, "global_outs[" + std::to_string(i) + "]");
    if (gv.rw > 0 && gv.rh > 0) {
      gv.hc = cache.get(s.w, gv.rw);
      gv.vc = cache.get(s.h, gv.rh);
      gv.vfirst = pass_vertical_first(s, gv.rw, gv.rh);
    } else {
      gv.rw = gv.rh = 0;  // PIL: a zero-size resize, the view is all fill
    }
    views.push_back(gv);

    py::object tout = tile_outs[i];
    const int ntiles = grid.first * grid.second;
    if (ntiles > 1) {
      keep.push_back(tout);
      if (tout.is_none())
        throw py::value_error("tile_outs[" + std::to_string(i) + "]: image needs " + std::to_string(ntiles) +
                              " tiles but no buffer was given");
      View tv;
      tv.src = &sources[i];
      tv.rw = tv.canvas_w = m.tile * grid.first;
      tv.rh = tv.canvas_h = m.tile * grid.second;
      tv.tiled = true;
      tv.cols = grid.first;
      tv.tile = m.tile;
      tv.out = make_out(tout, {ntiles, 3, m.tile, m.tile}, "tile_outs[" + std::to_string(i) + "]");
      tv.hc = cache.get(s.w, tv.rw);
      tv.vc = cache.get(s.h, tv.rh);
      tv.vfirst = pass_vertical_first(s, tv.rw, tv.rh);
      views.push_back(tv);
    } else if (!tout.is_none()) {
      throw py::value_error("tile_outs[" + std::to_string(i) + "]: image has no tiles; pass None");
    }
  }

  // Bands: one per view single-threaded; otherwise about 3 tasks per thread, at least 32 rows each.
  int64_t total_rows = 0;
  for (const auto& v : views) total_rows += v.canvas_h;
  const int band = threads == 1 ? (1 << 30)
                                : static_cast<int>(std::max<int64_t>(32, (total_rows + 3 * threads - 1) / (3 * threads)));
  std::vector<Task> tasks;
  for (size_t vi = 0; vi < views.size(); ++vi)
    for (int y = 0; y < views[vi].canvas_h; y += band)
      tasks.push_back({static_cast<int>(vi), y, std::min(views[vi].canvas_h, y + band)});

  {
    py::gil_scoped_release release;
    run_all(views, tasks, threads);
  }
  return out_grids;
}

// Plain resize of one image to (out_w, out_h), returned as uint8 HxWx3 (tests; mirrors PIL).
py::array_t<uint8_t> resize_u8(const py::object& image, int out_w, int out_h) {
  if (out_w <= 0 || out_h <= 0) throw py::value_error("output size must be positive");
  Source s = make_source(image, 0);
  View v;
  v.src = &s;
  v.rw = v.canvas_w = out_w;
  v.rh = v.canvas_h = out_h;
  CoeffCache cache;
  v.hc = cache.get(s.w, out_w);
  v.vc = cache.get(s.h, out_h);
  v.vfirst = pass_vertical_first(s, out_w, out_h);
  // Run through the float32 path, then invert the (exact, monotone) normalisation table.
  std::vector<float> buf(static_cast<size_t>(3) * out_w * out_h);
  v.out.ptr = reinterpret_cast<char*>(buf.data());
  v.out.kind = OutKind::F32;
  {
    py::gil_scoped_release release;
    run_task(v, Task{0, 0, out_h});
  }
  py::array_t<uint8_t> out({out_h, out_w, 3});
  auto o = out.mutable_unchecked<3>();
  const NormTables& t = norm_tables();
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < out_h; ++y)
      for (int x = 0; x < out_w; ++x) {
        const float f = buf[(static_cast<size_t>(c) * out_h + y) * out_w + x];
        o(y, x, c) = static_cast<uint8_t>(std::lower_bound(t.f32, t.f32 + 256, f) - t.f32);
      }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "deepencoder host engine: Pillow-exact bicubic resize, pad, Gundam tiling, normalisation";
  m.def("preprocess_into", &preprocess_into, py::arg("images"), py::arg("modes"), py::arg("max_tiles"),
        py::arg("global_outs"), py::arg("tile_outs"), py::arg("grids") = py::none(), py::arg("threads") = 1,
        py::arg("family") = "ocr1",
        "Write every view of every image into the given buffers; returns the (cols, rows) grids.\n"
        "global_outs[i]: [3, S, S]; tile_outs[i]: [cols*rows, 3, T, T] (T = 640 ocr1, 768 ocr2) or None\n"
        "when untiled. max_tiles None: the family's default (ocr1 9, ocr2 6).\n"
        "Buffers: numpy float32/float16 or torch float32/bfloat16/float16 CPU tensors, C-contiguous.");
  m.def("tile_grid", [](int64_t w, int64_t h, const py::object& max_tiles, const std::string& family) {
          const ModeSpec& g = get_mode("gundam", family);
          return tile_grid(w, h, resolve_max_tiles(max_tiles, g), g.tile, g.min_tiles);
        }, py::arg("width"), py::arg("height"), py::arg("max_tiles") = py::none(), py::arg("family") = "ocr1",
        "Gundam (cols, rows); (1, 1) when the image fits in one tile. Same rule as modes.choose_tile_grid.");
  m.def("pad_geometry", [](int64_t w, int64_t h, int S) {
          int rw, rh, px, py;
          if (w <= 0 || h <= 0) throw py::value_error("image size must be positive");
          pad_geometry(w, h, S, &rw, &rh, &px, &py);
          return py::make_tuple(rw, rh, px, py);
        }, py::arg("width"), py::arg("height"), py::arg("size"),
        "ImageOps.pad geometry: (resized_w, resized_h, paste_x, paste_y).");
  m.def("resize_u8", &resize_u8, py::arg("image"), py::arg("width"), py::arg("height"),
        "Pillow-exact BICUBIC resize to uint8 HxWx3 (for tests).");
  m.def("simd", []() { return std::string(g_use_simd ? "avx2" : "scalar"); }, "Kernel set in use.");
  m.def("set_simd", [](bool on) {
          const bool prev = g_use_simd;
          g_use_simd = on && cpu_has_avx2();
          return prev;
        }, py::arg("enabled"), "Enable/disable the AVX2 kernels (when the CPU has them); returns the old state.");
  m.def("pass_order", []() { return std::string(g_pillow13_order ? "pillow13" : "horizontal_first"); },
        "Resampling pass order in use.");
  m.def("set_pass_order", [](const std::string& order) {
          if (order == "pillow13") g_pillow13_order = true;
          else if (order == "horizontal_first") g_pillow13_order = false;
          else throw py::value_error("pass order must be 'pillow13' or 'horizontal_first', got '" + order + "'");
        }, py::arg("order"),
        "'pillow13': vertical pass first when the height shrinks by more than twice as many pixels as the\n"
        "width (Pillow >= 13); 'horizontal_first': always horizontal first (older Pillow).");
  m.def("norm_table", [](const std::string& dtype) {
          const NormTables& t = norm_tables();
          py::list out;
          for (int v = 0; v < 256; ++v) {
            if (dtype == "float32") out.append(py::float_(t.f32[v]));
            else if (dtype == "bfloat16") out.append(t.bf16[v]);
            else if (dtype == "float16") out.append(t.f16[v]);
            else throw py::value_error("dtype must be float32, bfloat16 or float16");
          }
          return out;
        }, py::arg("dtype"), "The 256 normalised values (float32) or their 16-bit patterns.");
}
