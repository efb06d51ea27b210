// 2-d convolution (cross-correlation, as in PyTorch) with stride, zero padding, dilation,
// groups and an optional bias, lowered to one GEMM per image and group through im2col, or for
// 3x3 kernels with unit stride, to Winograd's F(2x2, 3x3) or F(4x4, 3x3) (detail/winograd.hpp).
#pragma once

#include <algorithm>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include "gradcam/detail/conv_tail.hpp"
#include "gradcam/detail/eigen.hpp"
#include "gradcam/detail/gemm.hpp"
#include "gradcam/detail/im2col.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/detail/winograd.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

struct Conv2dOptions {
    Size2 stride = 1;
    Size2 padding = 0;
    Size2 dilation = 1;
    index_t groups = 1;
};

namespace detail {

// Checks the operands of conv2d and returns the geometry of one group.
inline ConvGeometry conv_geometry(const Shape& x, const Shape& w, const Shape* bias,
                                  const Conv2dOptions& o) {
    expect_rank(x, 4, "conv2d input", "N, C, H, W");
    expect_rank(w, 4, "conv2d weight", "out_channels, in_channels/groups, kH, kW");
    if (o.groups < 1 || o.stride.h < 1 || o.stride.w < 1 || o.dilation.h < 1 || o.dilation.w < 1 ||
        o.padding.h < 0 || o.padding.w < 0)
        throw argument_error(concat("conv2d: groups, stride and dilation must be positive and ",
                                    "padding non-negative (groups ", o.groups, ", stride ",
                                    o.stride.h, "x", o.stride.w, ", padding ", o.padding.h, "x",
                                    o.padding.w, ", dilation ", o.dilation.h, "x", o.dilation.w,
                                    ")"));
    if (w[2] < 1 || w[3] < 1 || w[0] < 1)
        throw shape_error(
            concat("conv2d: weight ", w, " has an empty kernel or no output channels"));
    if (x[1] != w[1] * o.groups || w[0] % o.groups != 0)
        throw shape_error(concat("conv2d: input ", x, " and weight ", w, " do not fit with ",
                                 o.groups, " group(s): need input channels = weight.size(1) * ",
                                 "groups and out_channels divisible by groups"));
    if (bias && (bias->rank() != 1 || (*bias)[0] != w[0]))
        throw shape_error(concat("conv2d: bias has shape ", *bias, ", expected [", w[0], "]"));
    ConvGeometry g;
    g.channels = w[1];
    g.height = x[2];
    g.width = x[3];
    g.kernel_h = w[2];
    g.kernel_w = w[3];
    g.stride_h = o.stride.h;
    g.stride_w = o.stride.w;
    g.pad_h = o.padding.h;
    g.pad_w = o.padding.w;
    g.dilation_h = o.dilation.h;
    g.dilation_w = o.dilation.w;
    const index_t reach_h = o.dilation.h * (w[2] - 1) + 1, reach_w = o.dilation.w * (w[3] - 1) + 1;
    if (x[2] + 2 * o.padding.h < reach_h || x[3] + 2 * o.padding.w < reach_w)
        throw shape_error(concat("conv2d: input ", x, " padded by ", o.padding.h, "x", o.padding.w,
                                 " is smaller than the dilated kernel ", reach_h, "x", reach_w));
    g.out_h = (x[2] + 2 * o.padding.h - reach_h) / o.stride.h + 1;
    g.out_w = (x[3] + 2 * o.padding.w - reach_w) / o.stride.w + 1;
    return g;
}

#if defined(GRADCAM_DETAIL_OWN_GEMM)
// Small outputs (the 7x7 to 28x28 maps deep in a network) are computed transposed, pixels down
// and output channels across: Y^T = im2col(X)^T W^T. The register tile then spans output
// channels (multiples of 64 in every torchvision network) instead of pixels (49 or 196, which a
// tile 48 wide pads by up to a half), and W^T, the large operand there, is packed once per
// weight tensor (Tensor::derived) rather than on every call. The 7 x 4 AVX-512 tile fits the 7,
// 14, 28 and 56 pixel rows of those maps exactly. Measured per layer on ResNet-50: 1.15-1.45x
// faster than the untransposed product from 28x28 down.
template <class T>
using PixelMajorKernel = GemmKernel<T, gemm_vector_bytes == 64 ? 7 : gemm_default_rows,
                                    gemm_vector_bytes == 64 ? 4 : 2>;

// W_g^T for each group, packed for PixelMajorKernel.
template <class T>
using PackedConvWeights = std::vector<typename PixelMajorKernel<T>::PackedRight>;

// Transposing Y^T back costs in proportion to pixels x channels, packing W on every call in
// proportion to channels x g.rows(): the transposed product pays where the second is the larger.
template <class T>
bool pixel_major_applies(const ConvGeometry& g) {
    return (std::is_same_v<T, float> || std::is_same_v<T, double>) && 2 * g.rows() >= g.cols();
}

// Each group's W^T packed for the forward product, or with `adjoint` its W, for the input
// gradient's dcol^T = dY^T W.
template <class T>
std::shared_ptr<const PackedConvWeights<T>> packed_conv_weights(const Tensor<T>& weight,
                                                                index_t groups, bool adjoint) {
    return weight.template derived<PackedConvWeights<T>>(
        static_cast<std::size_t>(2 * groups + adjoint), [groups, adjoint](const Tensor<T>& w) {
            const index_t group_out = w.dim(0) / groups, rows = w.size() / w.dim(0);
            PackedConvWeights<T> packed;
            for (index_t gi = 0; gi < groups; ++gi) {
                const auto w_g = view(w.data() + gi * group_out * rows, group_out, rows);
                packed.emplace_back(adjoint ? w_g : w_g.transposed());
            }
            return packed;
        });
}

// One image's group: y (group_out x pixels) = (im2col(x)^T W^T)^T, by tiles of output rows,
// each block of the product transposed back (with `tail` applied) by the thread that computed it.
template <class T>
void conv_pixel_major(const T* x, const ConvGeometry& g, const typename PixelMajorKernel<T>::PackedRight& w_t,
                      index_t group_out, index_t rows_per_tile, T* y, const ConvTail<T>* tail) {
    const index_t ld = padded_stride<T>(group_out);
    const MatrixView<T> w_shape{nullptr, g.rows(), group_out, 1, g.rows()};
    const TransposedOutput<T> out{y, g.cols(), 0, 0, false, tail};
    if (g.is_pointwise()) {
        T* y_t = thread_scratch<T, 3>(g.cols() * ld);
        gemm_parts<PixelMajorKernel<T>>(view(x, g.rows(), g.cols()).transposed(), w_shape, &w_t, y_t, ld,
                                        false, true, nullptr, &out);
        return;
    }
    const index_t tile_pixels = std::min(g.out_h, rows_per_tile) * g.out_w;
    T* y_t = thread_scratch<T, 3>(tile_pixels * ld);
    T* col = thread_scratch<T>(g.rows() * tile_pixels);
    for (index_t oh0 = 0; oh0 < g.out_h; oh0 += rows_per_tile) {
        const index_t oh1 = std::min(g.out_h, oh0 + rows_per_tile), cols = (oh1 - oh0) * g.out_w;
        im2col(x, g, col, oh0, oh1);
        const TransposedOutput<T> tile_out = out.part(oh0 * g.out_w, 0);
        gemm_parts<PixelMajorKernel<T>>(view(col, g.rows(), cols).transposed(), w_shape, &w_t, y_t,
                                        ld, false, true, nullptr, &tile_out);
    }
}

// Its input gradient, dx += col2im((dY^T W)^T) with W packed as its adjoint; for a pointwise
// convolution, strided or not, dx = (or += with `accumulate`) (dY^T W)^T, spread out by the
// stride. The whole image at once: these outputs are small.
template <class T>
void conv_pixel_major_adjoint(const T* dy, const ConvGeometry& g, const typename PixelMajorKernel<T>::PackedRight& w,
                              index_t group_out, T* dx, bool accumulate) {
    const index_t ld = padded_stride<T>(g.rows());
    T* dcol_t = thread_scratch<T, 3>(g.cols() * ld);
    const MatrixView<T> dy_t = view(dy, group_out, g.cols()).transposed();
    const MatrixView<T> w_shape{nullptr, group_out, g.rows(), g.rows(), 1};
    if (g.is_pointwise()) {
        const TransposedOutput<T> out{dx, g.cols(), 0, 0, accumulate, nullptr};
        gemm_parts<PixelMajorKernel<T>>(dy_t, w_shape, &w, dcol_t, ld, false, true, nullptr, &out);
        return;
    }
    gemm_parts<PixelMajorKernel<T>>(dy_t, w_shape, &w, dcol_t, ld, false, true);
    if (g.is_strided_pointwise())
        col2im_pointwise(dcol_t, index_t(1), ld, g, dx, !accumulate);
    else if (g.stride_w == 2 && g.dilation_w == 1)
        col2im_add_transposed_by_blocks(dcol_t, ld, g, dx);
    else
        col2im_add_transposed(dcol_t, ld, g, dx);
}
#endif

// Winograd's transformed kernels of a 3x3 weight [out, in, 3, 3] in Form (with `adjoint`, those
// of the input gradient's convolution), kept with the weights when `keep`, else made for this call.
template <class Form, class T>
std::shared_ptr<const Tensor<T>> winograd_kernels_of(const Tensor<T>& weight, bool adjoint, bool keep) {
    const auto make = [adjoint](const Tensor<T>& w) {
        const index_t out = w.dim(0), in = w.dim(1);
        Tensor<T> u = Tensor<T>::uninitialized(adjoint ? Shape{Form::positions, in, out}
                                                       : Shape{Form::positions, out, in});
        winograd_kernels<Form>(w.data(), out, in, adjoint, u.data());
        return u;
    };
    if (!keep) return std::make_shared<const Tensor<T>>(make(weight));
    return weight.template derived<Tensor<T>>(static_cast<std::size_t>(2 * Form::m + adjoint), make);
}

#if defined(GRADCAM_DETAIL_OWN_GEMM)
// Outputs of up to 256 tiles (ResNet's 56x56 and 28x28 maps in F(4x4, 3x3), its 14x14 and 7x7
// ones in F(2x2, 3x3)) with kernels small enough to keep packed. Measured per layer on
// ResNet-50, against the best other lowering: 28x28 with 128 channels 0.98 -> 0.77 ms (F(2x2,
// 3x3) against untransposed), 14x14 with 256 channels 1.24 -> 0.64 ms (against the transposed
// direct product).
inline constexpr index_t winograd_transposed_max_tiles = 256;
// Outputs of up to 16 tiles (7x7 maps) keep kernels four times larger: ResNet's 512-channel
// layer4, 1.36 -> 0.95 ms per layer, for 16 MiB kept per layer (VGG has no such layer; its
// 14x14 ones stay under the smaller limit, for its Grad-CAM's memory).
inline constexpr index_t winograd_transposed_small_tiles = 16;

// F(4x4, 3x3) takes the transposed products from 49 of its tiles up (28x28 maps). Measured per
// layer on ResNet-50, against F(2x2, 3x3): 56x56 with 64 channels 0.92 -> 0.62 ms, 28x28 with 128
// 0.72 -> 0.41; at 14x14 (16 tiles) the two are even, at 7x7 F(2x2, 3x3) wins, 0.75 against
// 1.04 ms. (The untransposed products, on larger maps, take F(4x4, 3x3) wherever they keep its
// kernels: 224x224 with 64 channels 13.9 -> 10.5 ms; see WinogradConvolution.)
inline constexpr index_t winograd_f4_min_tiles = 49;

// Whether the transposed products suit Form: enough tiles for it, few enough for the products,
// kernels small enough to keep.
template <class Form>
bool winograd_transposed_fits(const ConvGeometry& g, index_t out_channels) {
    const index_t tiles = winograd_tiles<Form>(g);
    const index_t kept_max =
        (tiles <= winograd_transposed_small_tiles ? 4 : 1) * winograd_kept_kernels_max;
    return (std::is_same_v<Form, WinogradF2> || tiles >= winograd_f4_min_tiles) &&
           tiles <= winograd_transposed_max_tiles &&
           Form::positions * g.channels * out_channels <= kept_max;
}

// Winograd's transformed kernels in Form with each position's U_e^T packed for Kernel (with
// `adjoint`, those of the input gradient's convolution), for winograd_conv3x3_transposed.
template <class Form, class Kernel>
struct PackedWinogradKernels {
    std::vector<typename Kernel::PackedRight> positions;
};

template <class Form, class Kernel, class T>
std::shared_ptr<const PackedWinogradKernels<Form, Kernel>> packed_winograd_kernels(
    const Tensor<T>& weight, bool adjoint) {
    return weight.template derived<PackedWinogradKernels<Form, Kernel>>(adjoint, [adjoint](const Tensor<T>& w) {
        const std::shared_ptr<const Tensor<T>> u = winograd_kernels_of<Form>(w, adjoint, false);
        const index_t out = u->dim(1), in = u->dim(2);  // of the convolution they serve
        PackedWinogradKernels<Form, Kernel> packed;
        for (index_t e = 0; e < Form::positions; ++e)
            packed.positions.emplace_back(view(u->data() + e * out * in, out, in).transposed());
        return packed;
    });
}
#endif

// Whether Winograd with the products transposed serves this convolution (never without the
// library's own GEMM).
template <class T>
bool winograd_transposed_applies(const ConvGeometry& g, index_t out_channels) {
#if defined(GRADCAM_DETAIL_OWN_GEMM)
    return (std::is_same_v<T, float> || std::is_same_v<T, double>) &&
           winograd_kernel_fits(g, out_channels) &&
           (winograd_transposed_fits<WinogradF4>(g, out_channels) ||
            winograd_transposed_fits<WinogradF2>(g, out_channels));
#else
    (void)g;
    (void)out_channels;
    return false;
#endif
}

// A Winograd convolution of geometry g into out_channels planes by the kernels of `weight` (with
// `adjoint`, the input gradient's convolution): with its products `transposed` (kernels packed
// and kept; F(4x4, 3x3) where winograd_transposed_fits allows it), or not (kernels kept when
// small, or with `keep_large` whatever their size; F(4x4, 3x3) where they are kept). For the
// transposed products the register tile has rows to fit the tiles: 7 for 49 and 196 tiles (7x7
// and 14x14 tiles), 8 for 16 (a 7x7 map in F(2x2, 3x3)), where 7 would pad 16 rows to 21 (1.16
// against 0.95 ms on layer4).
template <class T>
class WinogradConvolution {
  public:
    WinogradConvolution(const Tensor<T>& weight, const ConvGeometry& g, index_t out_channels,
                        bool adjoint, bool transposed, bool keep_large)
        : g_(g), out_channels_(out_channels) {
#if defined(GRADCAM_DETAIL_OWN_GEMM)
        if (transposed) {
            if (winograd_transposed_fits<WinogradF4>(g, out_channels))
                use_transposed<WinogradF4>(weight, adjoint);
            else
                use_transposed<WinogradF2>(weight, adjoint);
            return;
        }
#endif
        (void)transposed;
        // F(4x4, 3x3) where its kernels are kept; where they are made on each call (VGG's wide
        // layers in the forward), F(2x2, 3x3), whose kernels and buffers take 30 MB at most
        // against 45, which would take VGG-16's Grad-CAM from 1.25x to 1.30x its weights.
        if (keep_large || untransposed_kept<WinogradF4>(weight))
            use_untransposed<WinogradF4>(weight, adjoint, keep_large);
        else
            use_untransposed<WinogradF2>(weight, adjoint, keep_large);
    }

    // y = (or += with `accumulate`) the convolution of x, then `tail` applied to it.
    void run(const T* x, T* y, bool accumulate, const ConvTail<T>* tail = nullptr) const {
        run_(kernels_.get(), x, g_, out_channels_, y, accumulate, tail);
    }

  private:
    using Run = void (*)(const void* kernels, const T* x, const ConvGeometry& g,
                         index_t out_channels, T* y, bool accumulate, const ConvTail<T>* tail);

    // Untransposed kernels are kept with the weights when small, as in every ResNet (making them
    // costs 2% of a ResNet-50 forward); VGG's wide layers make theirs on each call, so that a
    // Grad-CAM's memory does not grow by 16/9 or 4 times those weights.
    template <class Form>
    static bool untransposed_kept(const Tensor<T>& weight) {
        return Form::positions * weight.dim(0) * weight.dim(1) <= winograd_kept_kernels_max;
    }

    template <class Form>
    void use_untransposed(const Tensor<T>& weight, bool adjoint, bool keep_large) {
        const bool keep = keep_large || untransposed_kept<Form>(weight);
        kernels_ = winograd_kernels_of<Form>(weight, adjoint, keep);
        run_ = [](const void* kernels, const T* x, const ConvGeometry& g, index_t out_channels,
                  T* y, bool accumulate, const ConvTail<T>* tail) {
            T* scratch = thread_scratch<T>(winograd_scratch_size<Form>(g, out_channels));
            winograd_conv3x3<Form>(x, g, static_cast<const Tensor<T>*>(kernels)->data(),
                                   out_channels, y, accumulate, scratch, tail);
        };
    }

#if defined(GRADCAM_DETAIL_OWN_GEMM)
    template <class Form>
    void use_transposed(const Tensor<T>& weight, bool adjoint) {
        if (winograd_tiles<Form>(g_) > winograd_transposed_small_tiles)
            use_transposed<Form, PixelMajorKernel<T>>(weight, adjoint);
        else if (adjoint && std::is_same_v<Form, WinogradF2> &&
                 winograd_tiles<Form>(g_) <= 4 * GemmKernel<T>::lanes)
            use_forward_kernels_for_adjoint(weight);
        else
            use_transposed<Form, GemmKernel<T>>(weight, adjoint);
    }
    // F(2x2, 3x3)'s input gradient by the forward's packed kernels (see
    // winograd_f2_adjoint_by_forward_kernels), made here if the forward has not made them.
    // ResNet's 512-channel layer4 keeps 16.8 MB of them per layer, which a Guided Grad-CAM
    // otherwise doubled: on ResNet-18 the backward of layer4's three 3x3 convolutions took
    // 3.5-3.7 ms with their own kernels, 3.1 with the forward's, still in cache.
    void use_forward_kernels_for_adjoint(const Tensor<T>& weight) {
        using Packed = PackedWinogradKernels<WinogradF2, GemmKernel<T>>;
        kernels_ = packed_winograd_kernels<WinogradF2, GemmKernel<T>>(weight, false);
        run_ = [](const void* kernels, const T* x, const ConvGeometry& g, index_t out_channels,
                  T* y, bool accumulate, const ConvTail<T>* tail) {
            if (tail) throw std::logic_error("winograd_f2_adjoint_by_forward_kernels: no tail");
            winograd_f2_adjoint_by_forward_kernels<GemmKernel<T>>(
                x, g, static_cast<const Packed*>(kernels)->positions, out_channels, y, accumulate);
        };
    }
    template <class Form, class Kernel>
    void use_transposed(const Tensor<T>& weight, bool adjoint) {
        kernels_ = packed_winograd_kernels<Form, Kernel>(weight, adjoint);
        run_ = [](const void* kernels, const T* x, const ConvGeometry& g, index_t out_channels,
                  T* y, bool accumulate, const ConvTail<T>* tail) {
            winograd_conv3x3_transposed<Form, Kernel>(
                x, g, static_cast<const PackedWinogradKernels<Form, Kernel>*>(kernels)->positions,
                out_channels, y, accumulate, tail);
        };
    }
#endif

    ConvGeometry g_;
    index_t out_channels_;
    std::shared_ptr<const void> kernels_;
    Run run_ = nullptr;
};

}  // namespace detail

namespace detail {

// One image's group through im2col and the product as it is: tiles of output rows on threads,
// each lowered into the thread's own buffer and multiplied there (with the tail applied), so
// that the buffer, about 2^17 values, stays in that thread's cache between the two.
template <class T>
void conv_channel_major(const T* x, const ConvGeometry& g, const MatrixView<T>& w_g, T* y,
                        const ConvTail<T>* tail) {
    const int threads = parallel_threads(g.out_h, true);
    const index_t wanted = std::max<index_t>(threads, (g.rows() * g.cols()) >> 17);
    const index_t tiles = std::min(g.out_h, (wanted + threads - 1) / threads * threads);
    const index_t rows_per_tile = (g.out_h + tiles - 1) / tiles;
    parallel_for(tiles, true, [&](index_t tile, int) {
        const index_t oh0 = tile * rows_per_tile, oh1 = std::min(g.out_h, oh0 + rows_per_tile);
        if (oh0 >= oh1) return;
        const index_t cols = (oh1 - oh0) * g.out_w;
        T* col = thread_scratch<T>(g.rows() * cols);
        im2col(x, g, col, oh0, oh1);
        ConvTail<T> tile_tail;
        if (tail) tile_tail = tail->part(oh0 * g.out_w, 0);
        gemm(w_g, view(col, g.rows(), cols), y + oh0 * g.out_w, g.cols(), false, false,
             tail ? &tile_tail : nullptr);
    });
}

// Its input gradient, dx += col2im(W_g^T * dY_g), by bands of output rows on threads, each
// multiplied into the thread's own buffer and added into dx from there, as in the forward.
// Neighbouring bands add into some of the same input rows, so the even bands run first, then
// the odd ones: bands two apart are disjoint once a band is tall enough. ResNet's stem (147
// rows, 112x112 outputs), timed inside a Guided Grad-CAM: 2.7 -> 2.1 ms, where multiplying the
// whole image at once wrote a 7 MB product to memory and read it back (1.6 with col2im by row
// pairs).
template <class T>
void conv_channel_major_adjoint(const T* dy, const ConvGeometry& g, const MatrixView<T>& w_g,
                                T* dx) {
    const index_t threads = parallel_threads(g.out_h, true);
    // Bands b and b + 2 share no input row when (k - 1) d < (band + 1) s.
    const index_t reach = (g.kernel_h - 1) * g.dilation_h;
    const index_t min_rows = std::max<index_t>(1, reach / g.stride_h);
    const index_t wanted = std::max<index_t>(2 * threads, (g.rows() * g.cols()) >> 17);
    const index_t bands = std::max<index_t>(
        1, std::min(g.out_h / min_rows, (wanted + 2 * threads - 1) / (2 * threads) * 2 * threads));
    const index_t rows_per_band = (g.out_h + bands - 1) / bands;
    for (index_t parity = 0; parity < 2; ++parity)
        parallel_for((bands + 1 - parity) / 2, true, [&](index_t half, int) {
            const index_t oh0 = (2 * half + parity) * rows_per_band;
            const index_t oh1 = std::min(g.out_h, oh0 + rows_per_band);
            if (oh0 >= oh1) return;
            const index_t cols = (oh1 - oh0) * g.out_w;
            T* col = thread_scratch<T>(g.rows() * cols);
            gemm(w_g.transposed(), view(dy + oh0 * g.out_w, w_g.rows, cols, g.cols()), col, cols,
                 false);
            col2im_add(col, g, dx, oh0, oh1);
        });
}

// Which lowering a convolution takes, the same way in the forward and the backward.
struct ConvLowering {
    bool winograd_small = false;  // Winograd transposed, kernels packed and kept
    bool winograd = false;        // Winograd untransposed
    index_t rows_per_tile = 1;    // output rows per im2col tile
};

template <class T>
ConvLowering conv_lowering(const ConvGeometry& g, index_t groups, index_t out_channels) {
    ConvLowering l;
    l.rows_per_tile = tile_rows(g);
    l.winograd_small = groups == 1 && winograd_transposed_applies<T>(g, out_channels);
    l.winograd = groups == 1 && !l.winograd_small && winograd_applies(g, out_channels);
    return l;
}

// y = tail(conv(x, weight)), for every image and group; see conv2d. The tail (the bias, and
// what conv2d_batch_norm fuses) is applied by each lowering as it writes its outputs.
template <class T>
Tensor<T> conv2d_forward(const Tensor<T>& x, const Tensor<T>& weight, const ConvTail<T>& tail,
                         const ConvGeometry& g, index_t groups) {
    const index_t batch = x.dim(0), out_channels = weight.dim(0), group_out = out_channels / groups;
    const index_t in_plane = g.height * g.width * g.channels;  // one group's input
    const index_t out_plane = g.cols() * group_out;            // one group's output
    const ConvLowering lowering = conv_lowering<T>(g, groups, out_channels);

    Tensor<T> y = Tensor<T>::uninitialized(Shape{batch, out_channels, g.out_h, g.out_w});
    const T* xs = x.data();
    const T* ws = weight.data();
    // Winograd's transformed weights, shared by the images.
    std::optional<WinogradConvolution<T>> winograd;
    if (lowering.winograd_small || lowering.winograd)
        winograd.emplace(weight, g, out_channels, false, lowering.winograd_small, false);
#if defined(GRADCAM_DETAIL_OWN_GEMM)
    std::shared_ptr<const PackedConvWeights<T>> packed;
    if (!lowering.winograd && !lowering.winograd_small && pixel_major_applies<T>(g))
        packed = packed_conv_weights(weight, groups, false);
#endif
    // Images in parallel when there are several; a single image's GEMM is threaded
    // inside detail::gemm.
    // Each image is lowered a tile of output rows at a time, so the buffer stays small.
    parallel_for(batch * groups, batch > 1, [&](index_t item, int) {
        const index_t gi = item % groups;
        const T* x_group = xs + item * in_plane;
        const auto w_g = view(ws + gi * group_out * g.rows(), group_out, g.rows());
        T* y_group = y.data() + item * out_plane;
        const ConvTail<T> group_tail = tail.part(item * out_plane, gi * group_out);
        const ConvTail<T>* t = group_tail.empty() ? nullptr : &group_tail;
        if (winograd) {
            winograd->run(x_group, y_group, false, t);
            return;
        }
#if defined(GRADCAM_DETAIL_OWN_GEMM)
        if (packed) {
            conv_pixel_major(x_group, g, (*packed)[static_cast<std::size_t>(gi)], group_out,
                             lowering.rows_per_tile, y_group, t);
            return;
        }
#endif
        if (g.is_pointwise()) {
            gemm(w_g, view(x_group, g.rows(), g.cols()), y_group, g.cols(), false, true, t);
        } else {
            conv_channel_major(x_group, g, w_g, y_group, t);
        }
    });
    return y;
}

// The backward of a convolution recorded with inputs x, weight and, when `has_bias`, bias at
// 0, 1 and 2 (an op that fuses more after the convolution records its other inputs after these):
//   dW_g += dY_g * im2col(X_g)^T,  dX_g += col2im(W_g^T * dY_g),  db[o] += sum dY[., o].
template <class T>
Backward<T> conv2d_backward(const ConvGeometry& g, index_t groups, index_t out_channels,
                            bool has_bias) {
    const index_t group_out = out_channels / groups;
    const index_t in_plane = g.height * g.width * g.channels, out_plane = g.cols() * group_out;
    const ConvLowering lowering = conv_lowering<T>(g, groups, out_channels);
    return [g, groups, group_out, in_plane, out_plane, lowering, has_bias](
               const Node<T>& self, const Tensor<T>& dy, GradientSink<T>& sink) {
        const index_t rows_per_tile = lowering.rows_per_tile;
        // x's values only for the weight gradient: an op may record that it does not read them.
        const Shape& x_shape = self.input(0).shape();
        const Tensor<T>& wv = self.input(1).value();
        const index_t batch = x_shape[0];
        const bool want_x = sink.wants(0), want_w = sink.wants(1);
        const bool want_b = has_bias && sink.wants(2);
        bool fresh = false;  // dx is uninitialised: assign to it rather than add
        T* dx = want_x ? sink.of(0, fresh).data() : nullptr;
        // The input gradient by Winograd where the forward took it: the 3x3 convolution of dY
        // (padded by 2 - p) back to x, with the products transposed or not as suits that
        // convolution's own geometry (with p = 0 it is larger than the forward's). Its kernels
        // are kept with the weights whatever their size: a Grad-CAM's backward pass does not come
        // down to these layers, and the passes that do (to the input) trade that memory for speed.
        const bool winograd_dx = want_x && (lowering.winograd || lowering.winograd_small) &&
                                 winograd_adjoint_applies(g);
        // Both pointwise lowerings assign; col2im adds.
        const bool assigns = g.is_pointwise() || g.is_strided_pointwise();
        if (fresh && !assigns && !winograd_dx) std::fill_n(dx, x_shape.numel(), T(0));
        std::optional<WinogradConvolution<T>> adjoint_winograd;
        if (winograd_dx) {
            const ConvGeometry adjoint = winograd_adjoint(g, group_out);
            adjoint_winograd.emplace(wv, adjoint, g.channels, true,
                                     winograd_transposed_applies<T>(adjoint, g.channels), true);
        }
#if defined(GRADCAM_DETAIL_OWN_GEMM)
        std::shared_ptr<const PackedConvWeights<T>> adjoint_packed;
        if (want_x && !adjoint_winograd && pixel_major_applies<T>(g))
            adjoint_packed = packed_conv_weights(wv, groups, true);
#endif
        // The weight gradient sums over images: each thread sums into its own copy.
        const bool parallel = batch > 1;
        const index_t weight_size = wv.size();
        std::vector<Tensor<T>> dw_partial;
        if (want_w)
            for (int t = 0; t < parallel_threads(batch * groups, parallel); ++t)
                dw_partial.emplace_back(Shape{weight_size});
        parallel_for(batch * groups, parallel, [&](index_t item, int thread) {
            const index_t gi = item % groups;
            const T* dy_group = dy.data() + item * out_plane;
            const auto w_g = view(wv.data() + gi * group_out * g.rows(), group_out, g.rows());
            const T* x_group = want_w ? self.input(0).value().data() + item * in_plane : nullptr;
            T* dw_g = want_w ? dw_partial[static_cast<std::size_t>(thread)].data() +
                                   gi * group_out * g.rows()
                             : nullptr;
            bool dx_done = false;
            if (adjoint_winograd) {
                adjoint_winograd->run(dy_group, dx + item * in_plane, !fresh);
                dx_done = true;
                if (!want_w) return;
            }
#if defined(GRADCAM_DETAIL_OWN_GEMM)
            if (adjoint_packed) {
                conv_pixel_major_adjoint(dy_group, g,
                                         (*adjoint_packed)[static_cast<std::size_t>(gi)], group_out,
                                         dx + item * in_plane, !(fresh && assigns));
                dx_done = true;
                if (!want_w) return;
            }
#endif
            if (g.is_pointwise()) {
                const auto dy_g = view(dy_group, group_out, g.cols());
                if (want_x && !dx_done)
                    gemm(w_g.transposed(), dy_g, dx + item * in_plane, g.cols(), !fresh);
                if (want_w)
                    gemm(dy_g, view(x_group, g.rows(), g.cols()).transposed(), dw_g, g.rows(),
                         true);
                return;
            }
            if (want_x && !dx_done && g.is_strided_pointwise()) {
                // One product for the image, its threads inside, then spread out by the stride.
                T* col = thread_scratch<T>(g.rows() * g.cols());
                gemm(w_g.transposed(), view(dy_group, group_out, g.cols()), col, g.cols(), false);
                col2im_pointwise(col, g.cols(), index_t(1), g, dx + item * in_plane, fresh);
            } else if (want_x && !dx_done) {
                conv_channel_major_adjoint(dy_group, g, w_g, dx + item * in_plane);
            }
            if (!want_w) return;
            T* col = thread_scratch<T>(g.rows() * rows_per_tile * g.out_w);
            for (index_t oh0 = 0; oh0 < g.out_h; oh0 += rows_per_tile) {
                const index_t oh1 = std::min(g.out_h, oh0 + rows_per_tile), cols = (oh1 - oh0) * g.out_w;
                const auto dy_tile = view(dy_group + oh0 * g.out_w, group_out, cols, g.cols());
                im2col(x_group, g, col, oh0, oh1);
                gemm(dy_tile, view(col, g.rows(), cols).transposed(), dw_g, g.rows(), true);
            }
        });
        if (want_w) {
            auto dw = array(sink.of(1).data(), weight_size);
            for (const Tensor<T>& part : dw_partial) dw += array(part.data(), weight_size);
        }
        if (want_b)
            for (index_t item = 0; item < batch * groups; ++item)
                VectorMap<T>(sink.of(2).data() + (item % groups) * group_out, group_out) +=
                    matrix(dy.data() + item * out_plane, group_out, g.cols()).rowwise().sum();
    };
}

}  // namespace detail

// forward:  y[n, o] = b[o] + sum_{c in group(o), i, j} w[o, c, i, j] * x[n, c, oh*s + i*d - p, ...]
//           computed per image n and group g as Y_g = W_g * im2col(X_g), by tiles of output rows.
// backward: dW_g += dY_g * im2col(X_g)^T,  dX_g += col2im(W_g^T * dY_g),  db[o] += sum dY[., o].
// A 3x3 kernel with unit stride goes through Winograd both ways (without groups): dX is then the
// convolution of dY with the transposed kernels rotated by 180 degrees, padded by 2 - p.
template <class T>
Var<T> conv2d(const Var<T>& x, const Var<T>& weight, const Var<T>& bias,
              const Conv2dOptions& options = {}) {
    const Shape bias_shape = bias ? bias.shape() : Shape();
    const detail::ConvGeometry g =
        detail::conv_geometry(x.shape(), weight.shape(), bias ? &bias_shape : nullptr, options);
    detail::ConvTail<T> tail;
    if (bias) tail.bias = bias.value().data();
    Tensor<T> y = detail::conv2d_forward(x.value(), weight.value(), tail, g, options.groups);
    auto backward =
        detail::conv2d_backward<T>(g, options.groups, weight.shape()[0], static_cast<bool>(bias));
    // x only for the weight gradient; the output not at all.
    const BackwardReads reads{.output = false, .inputs = {weight.differentiable(), true}};
    if (bias)
        return x.tape().record("conv2d", std::move(y), {x, weight, bias}, std::move(backward),
                               reads);
    return x.tape().record("conv2d", std::move(y), {x, weight}, std::move(backward), reads);
}

template <class T>
Var<T> conv2d(const Var<T>& x, const Var<T>& weight, const Conv2dOptions& options = {}) {
    return conv2d(x, weight, Var<T>(), options);
}

}  // namespace gradcam
