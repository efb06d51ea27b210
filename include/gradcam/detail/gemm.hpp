// The matrix product C = A B (or C += A B) that convolutions are lowered to.
//
// On ResNet-50's convolutions (2 threads, AVX-512) Eigen's GEMM reached 110-165 GFLOP/s on 2 cores
// of an AMD EPYC (226 peak), the product below 170-210; its micro-kernel alone, on operands in
// cache, runs at 200-230 GFLOP/s on one core of a Xeon with two FMA units. It is the usual blocked
// scheme (Goto and van de Geijn, "Anatomy of high-performance matrix multiplication", TOMS 2008): A
// and B are copied in blocks into "packed" panels whose layout is the order the inner loop reads
// them in, and a micro-kernel keeps an MR x NR tile of C in vector registers while it runs down the
// shared dimension. An operand whose panels already lie in memory in that order is read in place
// instead (A stored by columns; B stored by rows, when one block of A's rows reads each of its
// panels only once). Each thread takes a part of C (a range of its columns or of its rows) and
// packs its own operands; nothing is shared, nothing waits.
//
// Operands are strided views: the backward passes' transposed operands are packed like any
// other. The kernel is written with GCC/Clang vector extensions, sized to the widest vector the
// compiler targets; other compilers, element types other than float and double, and narrow
// products use Eigen.
#pragma once

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#if defined(__GNUC__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "gradcam/detail/conv_tail.hpp"
#include "gradcam/detail/eigen.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/detail/transpose.hpp"
#include "gradcam/tensor.hpp"

namespace gradcam::detail {

// A read-only matrix operand: element (i, k) is data[i * row_stride + k * col_stride].
template <class T>
struct MatrixView {
    const T* data = nullptr;
    index_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;

    MatrixView transposed() const { return {data, cols, rows, col_stride, row_stride}; }
    const T& operator()(index_t i, index_t k) const { return data[i * row_stride + k * col_stride]; }
};

// A rows x cols row-major matrix, or one whose rows start `stride` values apart.
template <class T>
MatrixView<T> view(const T* data, index_t rows, index_t cols) {
    return {data, rows, cols, cols, 1};
}
template <class T>
MatrixView<T> view(const T* data, index_t rows, index_t cols, index_t stride) {
    return {data, rows, cols, stride, 1};
}

// Translation units built for different vector widths get differently named copies of what
// follows, so that a program mixing them cannot pair one's packing with the other's kernel, or
// one's transposes (detail/transpose.hpp) with the other's.
#if defined(__AVX512F__)
inline namespace gemm_vector64 {
#elif defined(__AVX__)
inline namespace gemm_vector32 {
#else
inline namespace gemm_vector16 {
#endif

// Where a product computed transposed, C = Y^T (pixels x output channels), puts each block of C
// once it is final: transposed into y (output channels of `pixels` values each), or added there
// with `accumulate`, and a convolution's `tail` (of the whole image's group) applied, while the
// block is still in the cache of the thread that computed it. first_pixel and first_channel
// place C's first row and column in y.
template <class T>
struct TransposedOutput {
    // Written 16 channels by 256 pixels at a time, so that the tail reads the block from L1.
    static constexpr index_t block_channels = 16, block_pixels = 256;

    T* y = nullptr;
    index_t pixels = 0, first_pixel = 0, first_channel = 0;
    bool accumulate = false;
    const ConvTail<T>* tail = nullptr;

    TransposedOutput part(index_t pixel, index_t channel) const {
        TransposedOutput p = *this;
        p.first_pixel += pixel;
        p.first_channel += channel;
        return p;
    }

    // C's rows [0, rows) and columns [col0, col0 + cols); C's rows are ldc apart.
    void write(const T* c, index_t ldc, index_t rows, index_t col0, index_t cols) const {
        for (index_t j0 = 0; j0 < cols; j0 += block_channels)
            for (index_t i0 = 0; i0 < rows; i0 += block_pixels) {
                const index_t n = std::min(block_channels, cols - j0);
                const index_t m = std::min(block_pixels, rows - i0);
                const index_t k0 = first_channel + col0 + j0, p0 = first_pixel + i0;
                transpose_block(c + i0 * ldc + col0 + j0, ldc, m, n, y + k0 * pixels + p0, pixels,
                                accumulate);
                if (tail)
                    for (index_t k = k0; k < k0 + n; ++k)
                        tail->apply(y + k * pixels + p0, k, k * pixels + p0, m);
            }
    }
};

// dst (cols x rows) = src^T, or += with `accumulate`; src's rows are ld apart. By the blocks
// TransposedOutput writes, on threads (64 channels of a 56x56 map give 52). A convolution's
// `tail`, if any, is applied to each block as it is written (dst's rows are its output
// channels).
template <class T>
void transpose_into(const T* src, index_t rows, index_t cols, index_t ld, T* dst, bool accumulate,
                    const ConvTail<T>* tail = nullptr) {
    using Output = TransposedOutput<T>;
    const index_t col_blocks = (cols + Output::block_channels - 1) / Output::block_channels;
    const index_t row_blocks = (rows + Output::block_pixels - 1) / Output::block_pixels;
    parallel_for(col_blocks * row_blocks, rows * cols >= parallel_grain, [&](index_t b, int) {
        const index_t c0 = b / row_blocks * Output::block_channels;
        const index_t r0 = b % row_blocks * Output::block_pixels;
        const index_t count = std::min(Output::block_channels, cols - c0);
        const index_t length = std::min(Output::block_pixels, rows - r0);
        Output{dst, rows, r0, 0, accumulate, tail}.write(src + r0 * ld, ld, length, c0, count);
    });
}

// Rows of a transposed product's result a little longer than `cols`: at a power-of-two stride
// the transpose back would read lines that all fall into the same cache set.
template <class T>
index_t padded_stride(index_t cols) {
    return cols + 64 / static_cast<index_t>(sizeof(T));
}

#if defined(__GNUC__)
#define GRADCAM_DETAIL_OWN_GEMM 1

#if defined(__AVX512F__)
inline constexpr int gemm_vector_bytes = 64;
#elif defined(__AVX__)
inline constexpr int gemm_vector_bytes = 32;
#else
inline constexpr int gemm_vector_bytes = 16;
#endif

// The register tile: Rows rows of Vectors vectors each. The default, 8 x 3, takes 24
// accumulators of the 32 AVX-512 registers (6 x 2: 12 of the 16 below it); the rest hold B's
// row and A's broadcast value. On ResNet-50's 56x56 and 112x112 layers 8 x 3 is 3-20% faster
// than 12 x 2, most where there are 64 output channels (which 12 rows do not divide).
inline constexpr int gemm_default_rows = gemm_vector_bytes == 64 ? 8 : 6;
inline constexpr int gemm_default_vectors = gemm_vector_bytes == 64 ? 3 : 2;

template <class T, int Rows = gemm_default_rows, int Vectors = gemm_default_vectors>
struct GemmKernel {
    // Unaligned: packed panels are aligned, C and the operands need not be.
    typedef T Vec __attribute__((vector_size(gemm_vector_bytes), aligned(sizeof(T))));
    static constexpr index_t lanes = gemm_vector_bytes / sizeof(T);
    static constexpr index_t vectors = Vectors, nr = vectors * lanes, mr = Rows;
    // Blocks: a kc x nr panel of B (32 KiB for 12 x 2 floats, 48-64 KiB for the wider tiles:
    // L1 or near it; kc = 128 and 384 measured no better) is reused across the mc x kc block of
    // A (in L2, 224-256 KiB); the kc x nc panel of B lives in L2/L3. With mc at 32 rows of tiles
    // rather than 8, the 1x1 convolutions at 56x56 (up to 256 output channels) read B in place:
    // 256 -> 128 channels 1.00 -> 0.95 ms.
    static constexpr index_t kc = 256, mc = 32 * mr, nc = 16 * nr;

    // Spelled with intrinsics where there are some: GCC makes a chain of masked moves of the
    // portable forms.
    static Vec broadcast(T x) {
#if defined(__AVX512F__)
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, float>) return _mm512_set1_ps(x);
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, double>) return _mm512_set1_pd(x);
#elif defined(__AVX__)
        if constexpr (gemm_vector_bytes == 32 && std::is_same_v<T, float>) return _mm256_set1_ps(x);
        if constexpr (gemm_vector_bytes == 32 && std::is_same_v<T, double>) return _mm256_set1_pd(x);
#endif
        Vec v;
        for (index_t i = 0; i < lanes; ++i) v[i] = x;
        return v;
    }

    // Unaligned loads and stores. GCC copies a vector through memcpy in pieces of the width
    // its tuning prefers: 256 bits when it tunes for Intel's AVX-512 cores (Ice Lake, Rocket
    // Lake), and the accumulators, written in halves and read whole, then live on the stack
    // (42 against 153 GFLOP/s on one core of a Xeon on a 1024^3 product).
    static Vec load(const T* p) {
#if defined(__AVX512F__)
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, float>)
            return _mm512_loadu_ps(p);
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, double>)
            return _mm512_loadu_pd(p);
#elif defined(__AVX__)
        if constexpr (gemm_vector_bytes == 32 && std::is_same_v<T, float>)
            return _mm256_loadu_ps(p);
        if constexpr (gemm_vector_bytes == 32 && std::is_same_v<T, double>)
            return _mm256_loadu_pd(p);
#endif
        Vec v;
        std::memcpy(&v, p, sizeof(Vec));
        return v;
    }

    static void store(T* p, Vec v) {
#if defined(__AVX512F__)
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, float>)
            return _mm512_storeu_ps(p, v);
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, double>)
            return _mm512_storeu_pd(p, v);
#elif defined(__AVX__)
        if constexpr (gemm_vector_bytes == 32 && std::is_same_v<T, float>)
            return _mm256_storeu_ps(p, v);
        if constexpr (gemm_vector_bytes == 32 && std::is_same_v<T, double>)
            return _mm256_storeu_pd(p, v);
#endif
        std::memcpy(p, &v, sizeof(Vec));
    }

    // The first n < lanes values: loaded (the rest zeros), or stored (the rest untouched).
    static Vec load_first(const T* p, index_t n) {
#if defined(__AVX512F__)
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, float>)
            return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, double>)
            return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1), p);
#endif
        Vec v{};
        for (index_t i = 0; i < n; ++i) v[i] = p[i];
        return v;
    }

    static void store_first(T* p, Vec v, index_t n) {
#if defined(__AVX512F__)
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, float>)
            return _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, double>)
            return _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), v);
#endif
        for (index_t i = 0; i < n; ++i) p[i] = v[i];
    }

    static Vec multiply_add(Vec a, Vec b, Vec c) {
#if defined(__AVX512F__)
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, float>)
            return _mm512_fmadd_ps(a, b, c);
        if constexpr (gemm_vector_bytes == 64 && std::is_same_v<T, double>)
            return _mm512_fmadd_pd(a, b, c);
#elif defined(__FMA__) && defined(__AVX__)
        if constexpr (gemm_vector_bytes == 32 && std::is_same_v<T, float>)
            return _mm256_fmadd_ps(a, b, c);
        if constexpr (gemm_vector_bytes == 32 && std::is_same_v<T, double>)
            return _mm256_fmadd_pd(a, b, c);
#endif
        return a * b + c;
    }

    // Rows [i0, i0 + rows) and columns [k0, k0 + depth) of A, as panels of mr rows: for each k,
    // the panel's mr values of column k (rows past the end are zeros), read along A's rows. (A
    // stored by columns is read in place, but for a partial last panel.)
    static void pack_a(const MatrixView<T>& a, index_t i0, index_t rows, index_t k0, index_t depth,
                       T* out) {
        for (index_t ip = 0; ip < rows; ip += mr, out += mr * depth) {
            const index_t m = std::min(mr, rows - ip);
            for (index_t r = 0; r < m; ++r) {
                const T* src = &a(i0 + ip + r, k0);
                for (index_t k = 0; k < depth; ++k) out[k * mr + r] = src[k * a.col_stride];
            }
            for (index_t r = m; r < mr; ++r)
                for (index_t k = 0; k < depth; ++k) out[k * mr + r] = T(0);
        }
    }

    // Rows [k0, k0 + depth) and columns [j0, j0 + cols) of B, as panels of nr columns: for each
    // k, the panel's nr values of row k (columns past the end are zeros). B is read along its
    // memory: a row at a time when it is stored by rows, a column at a time when by columns.
    // Going across instead would touch a new cache line per value.
    static void pack_b(const MatrixView<T>& b, index_t k0, index_t depth, index_t j0, index_t cols,
                       T* out) {
        const index_t panels = (cols + nr - 1) / nr;
        if (b.row_stride == 1 && b.col_stride != 1) {
            for (index_t p = 0; p < panels; ++p) {
                T* panel = out + p * depth * nr;
                const index_t n = std::min(nr, cols - p * nr);
                for (index_t j = 0; j < nr; ++j) {
                    if (j >= n) {
                        for (index_t k = 0; k < depth; ++k) panel[k * nr + j] = T(0);
                        continue;
                    }
                    const T* column = &b(k0, j0 + p * nr + j);
                    for (index_t k = 0; k < depth; ++k) panel[k * nr + j] = column[k];
                }
            }
            return;
        }
        for (index_t k = 0; k < depth; ++k) {
            const T* src = &b(k0 + k, j0);
            for (index_t p = 0; p < panels; ++p) {
                T* row = out + (p * depth + k) * nr;
                const index_t n = std::min(nr, cols - p * nr);
                const T* from = src + p * nr * b.col_stride;
                if (b.col_stride == 1 && n == nr) {
                    std::memcpy(row, from, nr * sizeof(T));  // a fixed size: inlined, no call
                    continue;
                }
                for (index_t j = 0; j < n; ++j) row[j] = from[j * b.col_stride];
                std::fill(row + n, row + nr, T(0));
            }
        }
    }

    // acc += the panels' product. Lines are asked for ahead of the loads: of an operand read in
    // place, the next tile's along its rows; of packed B, the panel's values 32 steps on (8 KiB
    // for the 7 x 4 tile), which run on into the next panel.
    template <bool AInPlace, bool BInPlace>
    [[gnu::always_inline]] static void multiply_panels(index_t depth, const T* a, index_t a_step,
                                                       const T* b, index_t b_step,
                                                       Vec (&acc)[mr][vectors]) {
        constexpr index_t packed_ahead = 32 * nr;
        for (index_t k = 0; k < depth; ++k, a += a_step, b += b_step) {
            if constexpr (AInPlace) __builtin_prefetch(a + 64 / sizeof(T));
            for (index_t v = 0; v < vectors; ++v)
                __builtin_prefetch(b + (BInPlace ? nr : packed_ahead) + v * lanes);
            Vec bk[vectors];
            for (index_t v = 0; v < vectors; ++v) bk[v] = load(b + v * lanes);
#pragma GCC unroll 16
            for (index_t r = 0; r < mr; ++r) {
                const Vec ar = broadcast(a[r]);
                for (index_t v = 0; v < vectors; ++v) acc[r][v] = multiply_add(ar, bk[v], acc[r][v]);
            }
        }
    }

    // C's m x n tile (m <= mr, n <= nr) = or += the product of one panel of A and one of B: for
    // each k, A's mr values at a + k * a_step (mr when packed) and B's nr at b + k * b_step.
    static void micro_kernel(index_t depth, const T* a, index_t a_step, const T* b, index_t b_step,
                             T* c, index_t ldc, bool accumulate, index_t m, index_t n) {
        Vec acc[mr][vectors];
        for (auto& row : acc)
            for (Vec& v : row) v = Vec{};
        // An operand read in place (a matrix row per k, up to kc of them) is read by the next
        // tile further along those rows. With that many rows the hardware's prefetchers lose
        // track, and each new line is a miss the kernel waits for: on a Xeon (2 MiB L2, a slow
        // L3) with cold operands, a 512 -> 128 1x1 convolution at 28x28 took 0.56 ms instead of
        // 0.32. Packed weights streamed from memory (ResNet-50's layer4) arrive too late for
        // the hardware's prefetchers there too: 1024 -> 2048 at 14x14, stride 2, 0.99 -> 0.88 ms,
        // the 3x3 at 7x7 1.20 -> 1.00.
        if (a_step != mr && b_step != nr)
            multiply_panels<true, true>(depth, a, a_step, b, b_step, acc);
        else if (a_step != mr)
            multiply_panels<true, false>(depth, a, a_step, b, b_step, acc);
        else if (b_step != nr)
            multiply_panels<false, true>(depth, a, a_step, b, b_step, acc);
        else
            multiply_panels<false, false>(depth, a, a_step, b, b_step, acc);
        if (m == mr && n == nr) {
            for (index_t r = 0; r < mr; ++r)
                for (index_t v = 0; v < vectors; ++v) {
                    T* out = c + r * ldc + v * lanes;
                    store(out, accumulate ? acc[r][v] + load(out) : acc[r][v]);
                }
            return;
        }
        for (index_t r = 0; r < m; ++r)
            for (index_t j = 0; j < n; ++j) {
                const T value = acc[r][j / lanes][j % lanes];
                c[r * ldc + j] = accumulate ? c[r * ldc + j] + value : value;
            }
    }

    // B laid out once as the panels pack_b makes, for products that reuse it (a convolution's
    // weights): for each block of kc rows, the panels of all its columns, one after another.
    struct PackedRight {
        index_t rows = 0, cols = 0, padded_cols = 0;
        Buffer<T> panels;

        explicit PackedRight(const MatrixView<T>& b)
            : rows(b.rows), cols(b.cols), padded_cols((b.cols + nr - 1) / nr * nr),
              panels(allocate_aligned<T>(rows * padded_cols)) {
            for (index_t pc = 0; pc < rows; pc += kc)
                pack_b(b, pc, std::min(kc, rows - pc), 0, cols, panels.get() + pc * padded_cols);
        }
        // The panels of rows [pc, pc + kc) from column j on (j a multiple of nr).
        const T* block(index_t pc, index_t j) const {
            return panels.get() + pc * padded_cols + j * std::min(kc, rows - pc);
        }
    };

    // C (b.rows x n, rows ldc apart) = B D: a packed right operand multiplied from the left,
    // by D (b.cols x n, rows ldd apart) no wider than four vectors. B's values are broadcast
    // from its panels where they lie (a panel's rows are nr apart) and D's rows are loaded in
    // whole vectors, reading fewer than `lanes` values past each row's end (they reach only
    // lanes of C that are not stored). For F(2x2, 3x3)'s input gradient by the forward's own
    // kernels (detail/winograd.hpp); one thread.
    static void multiply_packed_on_left(const PackedRight& b, const T* d, index_t ldd, index_t n,
                                        T* c, index_t ldc) {
        switch ((n + lanes - 1) / lanes) {
            case 1:
                return packed_on_left<1>(b, d, ldd, n, c, ldc);
            case 2:
                return packed_on_left<2>(b, d, ldd, n, c, ldc);
            case 3:
                return packed_on_left<3>(b, d, ldd, n, c, ldc);
            case 4:
                return packed_on_left<4>(b, d, ldd, n, c, ldc);
            default:
                throw std::logic_error("multiply_packed_on_left: D wider than four vectors");
        }
    }

    // A block of B's rows at a time, and in it a panel at a time, so that B is read in the
    // order it lies in memory (the lines of the next tile asked for ahead); C's rows of the block
    // stay in cache across the panels.
    template <int DVectors>
    static void packed_on_left(const PackedRight& b, const T* d, index_t ldd, index_t n, T* c,
                               index_t ldc) {
        // As many rows of accumulators as leave a few vector registers for D's row and B's value.
        constexpr index_t registers = gemm_vector_bytes == 64 ? 32 : 16;
        constexpr int rows = std::min<int>(16, (registers - 2 - DVectors) / DVectors);
        for (index_t pc = 0; pc < b.rows; pc += kc) {
            const index_t depth = std::min(kc, b.rows - pc);
            for (index_t j = 0; j < b.cols; j += nr) {
                const T* panel = b.block(pc, j);
                const T* dj = d + j * ldd;
                const index_t steps = std::min(nr, b.cols - j);
                index_t r0 = 0;
                for (; r0 + rows <= depth; r0 += rows)
                    packed_on_left_tile<rows, DVectors>(panel + r0 * nr, steps, dj, ldd, n,
                                                        c + (pc + r0) * ldc, ldc, j > 0);
                for (; r0 < depth; ++r0)
                    packed_on_left_tile<1, DVectors>(panel + r0 * nr, steps, dj, ldd, n,
                                                     c + (pc + r0) * ldc, ldc, j > 0);
            }
        }
    }

    // C's TileRows rows (+= with `add`) = the product of TileRows rows of a panel of B (nr
    // apart) and `steps` rows of D.
    template <int TileRows, int DVectors>
    [[gnu::always_inline]] static void packed_on_left_tile(const T* a, index_t steps, const T* d,
                                                           index_t ldd, index_t n, T* c,
                                                           index_t ldc, bool add) {
        Vec acc[TileRows][DVectors];
        for (auto& row : acc)
            for (Vec& v : row) v = Vec{};
        for (index_t k = 0; k < steps; ++k) {
            __builtin_prefetch(a + TileRows * nr + k * (64 / sizeof(T)));
            Vec dk[DVectors];
            for (int v = 0; v < DVectors; ++v) dk[v] = load(d + k * ldd + v * lanes);
#pragma GCC unroll 16
            for (int r = 0; r < TileRows; ++r) {
                const Vec ar = broadcast(a[r * nr + k]);
                for (int v = 0; v < DVectors; ++v) acc[r][v] = multiply_add(ar, dk[v], acc[r][v]);
            }
        }
        const index_t last = n - (DVectors - 1) * lanes;  // lanes of the last vector stored
        for (int r = 0; r < TileRows; ++r) {
            T* out = c + r * ldc;
            for (int v = 0; v + 1 < DVectors; ++v)
                store(out + v * lanes, add ? acc[r][v] + load(out + v * lanes) : acc[r][v]);
            T* tail = out + (DVectors - 1) * lanes;
            const Vec& value = acc[r][DVectors - 1];
            if (last == lanes)
                store(tail, add ? value + load(tail) : value);
            else
                store_first(tail, add ? value + load_first(tail, last) : value, last);
        }
    }

    // B for one thread's part of C: a matrix to pack as it goes, or columns [first, first +
    // cols) of a PackedRight.
    struct Right {
        MatrixView<T> view;
        const PackedRight* packed = nullptr;
        index_t first = 0;
    };

    // One thread's product of the whole of a and b into c. Operands whose panels lie in memory
    // as the micro-kernel reads them are read in place, not packed: A stored by columns (each
    // panel's mr values are consecutive for every k), and B stored by rows (its nr values are)
    // when A has no more than mc rows, so that each panel of B is read once anyway (with more,
    // the packed copy, read again for each block of A's rows, is the faster). Only a last,
    // partial panel is packed then, with zeros past the edge. Packing reads and writes every
    // value once more: B in place makes a 64 x 256 x 3136 product (a 1x1 convolution at 56x56)
    // 10% faster on one thread.
    // A convolution's `tail`, if any, is applied to each block of C's columns once it is final,
    // while it is still in cache (C's rows are output channels, laid out with ldc as the tail's
    // residual is); for a product computed transposed, `transposed` writes the block instead.
    static void run(const MatrixView<T>& a, const Right& b, T* c, index_t ldc, bool accumulate,
                    const ConvTail<T>* tail = nullptr,
                    const TransposedOutput<T>* transposed = nullptr) {
        const index_t M = a.rows, K = a.cols, N = b.view.cols;
        const bool a_in_place = a.row_stride == 1,
                   b_in_place = !b.packed && b.view.col_stride == 1 && M <= mc;
        T* packed_a = thread_scratch<T, 1>(mc * kc);
        T* packed_b =
            b.packed ? nullptr : thread_scratch<T, 2>(kc * ((std::min(nc, N) + nr - 1) / nr * nr));
        for (index_t jc = 0; jc < N; jc += nc) {
            const index_t cols = std::min(nc, N - jc), full_cols = b_in_place ? cols / nr * nr : 0;
            for (index_t pc = 0; pc < K; pc += kc) {
                const index_t depth = std::min(kc, K - pc);
                const bool add = accumulate || pc > 0;
                const T* panels = packed_b;
                if (b.packed)
                    panels = b.packed->block(pc, b.first + jc);
                else if (full_cols < cols)
                    pack_b(b.view, pc, depth, jc + full_cols, cols - full_cols,
                           packed_b + full_cols * depth);
                for (index_t ic = 0; ic < M; ic += mc) {
                    const index_t rows = std::min(mc, M - ic), full_rows = a_in_place ? rows / mr * mr : 0;
                    if (full_rows < rows)
                        pack_a(a, ic + full_rows, rows - full_rows, pc, depth,
                               packed_a + full_rows * depth);
                    for (index_t jr = 0; jr < cols; jr += nr) {
                        const bool b_here = jr < full_cols;
                        const T* b_panel = b_here ? &b.view(pc, jc + jr) : panels + jr * depth;
                        const index_t b_step = b_here ? b.view.row_stride : nr;
                        for (index_t ir = 0; ir < rows; ir += mr) {
                            const bool a_here = ir < full_rows;
                            micro_kernel(depth, a_here ? &a(ic + ir, pc) : packed_a + ir * depth,
                                         a_here ? a.col_stride : mr, b_panel, b_step,
                                         c + (ic + ir) * ldc + jc + jr, ldc, add,
                                         std::min(mr, rows - ir), std::min(nr, cols - jr));
                        }
                    }
                }
            }
            if (transposed)
                transposed->write(c, ldc, M, jc, cols);
            else if (tail)
                for (index_t r = 0; r < M; ++r) tail->apply(c + r * ldc + jc, r, r * ldc + jc, cols);
        }
    }
};

// For products whose C is too narrow for the default tile (196 columns, say, which 48-wide tiles
// pad to 240), a narrower one where there is one.
template <class T>
using NarrowGemmKernel = GemmKernel<T, gemm_vector_bytes == 64 ? 12 : gemm_default_rows, 2>;
#endif

// The product by Eigen, with each operand mapped in the storage order it has, so that Eigen's
// own GEMM (which needs unit inner strides) reads it in place.
template <class T, class Body>
void with_eigen_map(const MatrixView<T>& m, Body&& body) {
    using Dynamic = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using DynamicColumns = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
    if (m.col_stride == 1)
        body(Eigen::Map<const Dynamic, 0, Eigen::OuterStride<>>(m.data, m.rows, m.cols,
                                                                Eigen::OuterStride<>(m.row_stride)));
    else if (m.row_stride == 1)
        body(Eigen::Map<const DynamicColumns, 0, Eigen::OuterStride<>>(
            m.data, m.rows, m.cols, Eigen::OuterStride<>(m.col_stride)));
    else
        body(Eigen::Map<const Dynamic, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>(
            m.data, m.rows, m.cols,
            Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(m.row_stride, m.col_stride)));
}

template <class T>
void eigen_gemm(const MatrixView<T>& a, const MatrixView<T>& b, T* c, index_t ldc, bool accumulate) {
    auto cm = matrix(c, a.rows, b.cols, ldc);
    with_eigen_map(a, [&](const auto& am) {
        with_eigen_map(b, [&](const auto& bm) {
            if (accumulate)
                cm.noalias() += am * bm;
            else
                cm.noalias() = am * bm;
        });
    });
}

#if defined(GRADCAM_DETAIL_OWN_GEMM)
// c = (or +=) a b, by Kernel, each thread taking a part of C: a range of its columns when it is
// at least as wide as tall (so each packs all of A, the smaller operand then), else a range of
// its rows, unless the other split leaves the busiest thread more than 4% fewer register tiles
// (then each thread reads all of the operand it would have shared out). B is a matrix, or a
// Kernel::PackedRight (packed) of b's shape; threads then share it and split C by rows, unless
// it has too few rows to share out evenly. Needs K > 0. `tail` and `transposed` as in
// Kernel::run.
template <class Kernel, class T>
void gemm_parts(const MatrixView<T>& a, const MatrixView<T>& b,
                const typename Kernel::PackedRight* packed, T* c, index_t ldc, bool accumulate,
                bool parallel, const std::type_identity_t<ConvTail<T>>* tail = nullptr,
                const std::type_identity_t<TransposedOutput<T>>* transposed = nullptr) {
    const index_t M = a.rows, N = b.cols, K = a.cols;
    const index_t row_tiles = (M + Kernel::mr - 1) / Kernel::mr;
    const index_t col_tiles = (N + Kernel::nr - 1) / Kernel::nr;
    const int threads = parallel_threads(std::max(row_tiles, col_tiles),
                                         parallel && M * N * K >= (index_t(1) << 20));
    // Register tiles on the busiest thread, splitting C's columns or its rows. Without packed B
    // the other split is taken where it leaves more than 4% fewer: 784 columns are 17 panels of
    // 48, 9 and 8 on two threads, where 512 rows split evenly (128 -> 512 channels at 28x28,
    // 0.564 -> 0.544 ms).
    const auto busiest = [threads](index_t split, index_t other) {
        return (split + threads - 1) / threads * other;
    };
    const index_t by_columns_tiles = busiest(col_tiles, row_tiles);
    const index_t by_rows_tiles = busiest(row_tiles, col_tiles);
    const bool by_columns = packed   ? M < 16 * Kernel::mr
                            : N >= M ? 25 * by_rows_tiles >= 24 * by_columns_tiles
                                     : 25 * by_columns_tiles < 24 * by_rows_tiles;
    const index_t unit = by_columns ? Kernel::nr : Kernel::mr;
    const index_t units = by_columns ? col_tiles : row_tiles;
    const index_t parts = std::min<index_t>(threads, units);
    parallel_for(parts, parts > 1, [&](index_t part, int) {
        const index_t first = units * part / parts * unit,
                      last = std::min(units * (part + 1) / parts * unit, by_columns ? N : M);
        ConvTail<T> part_tail;
        if (tail) part_tail = by_columns ? tail->part(first, 0) : tail->part(first * ldc, first);
        const ConvTail<T>* t = tail ? &part_tail : nullptr;
        TransposedOutput<T> part_out;
        if (transposed) part_out = by_columns ? transposed->part(0, first) : transposed->part(first, 0);
        const TransposedOutput<T>* out = transposed ? &part_out : nullptr;
        if (by_columns) {
            typename Kernel::Right right{b, packed, first};
            right.view.data = packed ? nullptr : &b(0, first);
            right.view.cols = last - first;
            Kernel::run(a, right, c + first, ldc, accumulate, t, out);
        } else {
            MatrixView<T> a_part = a;
            a_part.data = &a(first, 0);
            a_part.rows = last - first;
            Kernel::run(a_part, typename Kernel::Right{b, packed, 0}, c + first * ldc, ldc,
                        accumulate, t, out);
        }
    });
}

template <class T>
void gemm_parts(const MatrixView<T>& a, const MatrixView<T>& b, T* c, index_t ldc,
                bool accumulate, bool parallel, const ConvTail<T>* tail = nullptr) {
    gemm_parts<GemmKernel<T>>(a, b, nullptr, c, ldc, accumulate, parallel, tail);
}
#endif

// c (a.rows x b.cols, rows ldc apart) = a b, or += with `accumulate`, on several threads with
// `parallel` (none inside an OpenMP region: the caller's loop is parallel already); then a
// convolution's `tail`, if any, applied to C's rows (its output channels).
template <class T>
void gemm(const MatrixView<T>& a, const MatrixView<T>& b, T* c, index_t ldc, bool accumulate,
          bool parallel = true, const ConvTail<T>* tail = nullptr) {
    const index_t M = a.rows, N = b.cols, K = a.cols;
    if (M == 0 || N == 0) return;
    const auto tail_after = [&] {
        if (tail)
            for (index_t i = 0; i < M; ++i) tail->apply(c + i * ldc, i, i * ldc, N);
    };
    if (K == 0) {
        if (!accumulate)
            for (index_t i = 0; i < M; ++i) std::fill_n(c + i * ldc, N, T(0));
        tail_after();
        return;
    }
#if defined(GRADCAM_DETAIL_OWN_GEMM)
    // A narrow C (a 7x7 feature map has 49 columns) would waste up to half of the register
    // tile's width on padding: a narrower tile, or Eigen's, does better there. (Convolutions
    // with small outputs do not come here: they multiply transposed, see ops/conv.hpp.)
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
        const auto pads_little = [N](index_t nr) { return 5 * ((N + nr - 1) / nr * nr) <= 6 * N; };
        if (pads_little(GemmKernel<T>::nr)) {
            gemm_parts(a, b, c, ldc, accumulate, parallel, tail);
            return;
        }
        if (pads_little(NarrowGemmKernel<T>::nr)) {
            gemm_parts<NarrowGemmKernel<T>>(a, b, nullptr, c, ldc, accumulate, parallel, tail);
            return;
        }
    }
#endif
    eigen_gemm(a, b, c, ldc, accumulate);
    tail_after();
    (void)parallel;  // Eigen threads its products itself
}

}  // inline namespace
}  // namespace gradcam::detail
