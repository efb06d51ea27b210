// The fully connected layer: y = x W^T + b, one GEMM for the whole batch.
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

#include "gradcam/detail/eigen.hpp"
#include "gradcam/detail/parallel.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

namespace detail {

// For a few images the products are matrix-vector products, which Eigen runs on one thread
// and which are bound by reading the weight (400 MB in VGG-16's first classifier layer): split
// `extent` (output or input features) into blocks, one per thread. With more images, Eigen's
// own threaded GEMM does better.
inline bool split_by_features(index_t batch, index_t weight_size) {
    return batch < 4 && weight_size >= (index_t(1) << 20);
}

template <class Block>
void split_features(index_t batch, index_t extent, index_t weight_size, Block&& block) {
    const bool split = split_by_features(batch, weight_size);
    const index_t parts = split ? parallel_threads(extent, true) : 1;
    const index_t step = (extent + parts - 1) / parts;
    parallel_for(parts, split, [&](index_t part, int) {
        const index_t begin = part * step;
        if (begin < extent) block(begin, std::min(step, extent - begin));
    });
}

// R[o, k] = the sum of run k of W's row o, for `runs` equal runs per row (the channels of a
// flattened feature map). Kept with W as a convolution's packed weights are: made on first use,
// remade when W changes.
template <class T>
struct LinearRunSums {
    Tensor<T> sums;  // [out, runs]
};

template <class T>
std::shared_ptr<const LinearRunSums<T>> linear_run_sums(const Tensor<T>& weight, index_t runs) {
    return weight.template derived<LinearRunSums<T>>(
        static_cast<std::size_t>(runs), [runs](const Tensor<T>& w) {
            const index_t out = w.dim(0), in = w.dim(1);
            LinearRunSums<T> r{Tensor<T>::uninitialized(Shape{out, runs})};
            parallel_for(out, w.size() >= parallel_grain, [&](index_t o, int) {
                matrix(r.sums.data() + o * runs, runs, 1).noalias() =
                    matrix(w.data() + o * in, runs, in / runs).rowwise().sum();
            });
            return r;
        });
}

}  // namespace detail

// x: [N, in], W: [out, in], b: [out] (optional), y: [N, out].
// forward:  Y = X W^T + 1 b^T
// backward: dX += dY W,  dW += dY^T X,  db += column sums of dY.
template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& weight, const Var<T>& bias) {
    detail::expect_rank(x.shape(), 2, "linear input", "N, in_features");
    detail::expect_rank(weight.shape(), 2, "linear weight", "out_features, in_features");
    const index_t batch = x.shape()[0], in = x.shape()[1], out = weight.shape()[0];
    if (weight.shape()[1] != in)
        throw shape_error(detail::concat("linear: input ", x.shape(), " has ", in,
                                         " features but weight ", weight.shape(), " expects ",
                                         weight.shape()[1]));
    if (bias && bias.shape() != Shape{out})
        throw shape_error(
            detail::concat("linear: bias has shape ", bias.shape(), ", expected [", out, "]"));

    Tensor<T> y = Tensor<T>::uninitialized(Shape{batch, out});
    const auto xm = detail::matrix(x.value().data(), batch, in);
    const T* ws = weight.value().data();
    detail::split_features(batch, out, out * in, [&](index_t first, index_t count) {
        detail::matrix(y.data() + first, batch, count, out).noalias() =
            xm * detail::matrix(ws + first * in, count, in).transpose();
    });
    // Where the tape expects the channel sums of a feature map that x was flattened from, the
    // sums of dX over each channel's run are dY R (Tape::channel_sums_by_blocks), which reads
    // R's 8 MB where dX = dY W reads W's 400 (VGG-16's first classifier layer).
    const index_t runs = x.tape().will_record({x}) ? x.tape().expected_channel_blocks(x) : 0;
    std::shared_ptr<const detail::LinearRunSums<T>> run_sums;
    if (runs > 0 && runs < in && in % runs == 0)
        run_sums = detail::linear_run_sums(weight.value(), runs);
    auto ym = detail::matrix(y.data(), batch, out);
    if (bias) ym.rowwise() += detail::ConstVectorMap<T>(bias.value().data(), out).transpose();

    auto backward = [batch, in, out](const Node<T>& self, const Tensor<T>& dy,
                                     GradientSink<T>& sink) {
        auto g = detail::matrix(dy.data(), batch, out);
        if (sink.wants(0)) {
            T* dx = sink.of(0).data();
            const T* ws = self.input(1).value().data();
            if (detail::split_by_features(batch, out * in)) {
                // Bound by reading W: its rows whose dy is zero for every image are skipped,
                // not multiplied by zero. After a ReLU that is about half of them (VGG-16's
                // first classifier layer: 200 of its 400 MB), for a one-hot seed all but one.
                // Four rows go into each pass over dx: one row at a time read W at 22 GB/s
                // where the forward reads it at 32, four at a time at 29 (that layer's backward
                // 8.9 -> 7.0 ms on a Xeon).
                std::vector<index_t> live;
                for (index_t o = 0; o < out; ++o)
                    if ((g.col(o).array() != T(0)).any()) live.push_back(o);
                detail::split_features(batch, in, out * in, [&](index_t first, index_t count) {
                    const auto row = [&](index_t o) {
                        return detail::array(ws + o * in + first, count);
                    };
                    const auto dx_part = [&](index_t n) {
                        return detail::array(dx + n * in + first, count);
                    };
                    std::size_t i = 0;
                    for (; i + 4 <= live.size(); i += 4) {
                        const index_t o0 = live[i], o1 = live[i + 1], o2 = live[i + 2],
                                      o3 = live[i + 3];
                        for (index_t n = 0; n < batch; ++n)
                            dx_part(n) += g(n, o0) * row(o0) + g(n, o1) * row(o1) +
                                          g(n, o2) * row(o2) + g(n, o3) * row(o3);
                    }
                    for (; i < live.size(); ++i)
                        for (index_t n = 0; n < batch; ++n)
                            dx_part(n) += g(n, live[i]) * row(live[i]);
                });
            } else {
                detail::matrix(dx, batch, in).noalias() +=
                    g * detail::matrix(ws, out, in);
            }
        }
        if (sink.wants(1))
            detail::matrix(sink.of(1).data(), out, in).noalias() +=
                g.transpose() * detail::matrix(self.input(0).value().data(), batch, in);
        if (self.input_count() > 2 && sink.wants(2))
            detail::VectorMap<T>(sink.of(2).data(), out) += g.colwise().sum().transpose();
    };
    Var<T> result =
        bias ? x.tape().record("linear", std::move(y), {x, weight, bias}, std::move(backward))
             : x.tape().record("linear", std::move(y), {x, weight}, std::move(backward));
    // Runs of one feature each are W's own columns: sums of dX over them are dX = dY W.
    x.tape().set_block_sums(
        result, [run_sums, in](const Node<T>& self, const Tensor<T>& dy, index_t runs) {
            const T* r = runs == in                                  ? self.input(1).value().data()
                         : run_sums && run_sums->sums.dim(1) == runs ? run_sums->sums.data()
                                                                     : nullptr;
            if (!r) return Tensor<T>();
            const index_t batch = dy.dim(0), out = dy.dim(1);
            Tensor<T> sums = Tensor<T>::uninitialized(Shape{batch, runs});
            detail::matrix(sums.data(), batch, runs).noalias() =
                detail::matrix(dy.data(), batch, out) * detail::matrix(r, out, runs);
            return sums;
        });
    return result;
}

template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& weight) {
    return linear(x, weight, Var<T>());
}

}  // namespace gradcam
