// The training loss: cross-entropy of class scores against integer labels, averaged over the
// batch (torch.nn.functional.cross_entropy with reduction="mean"), fused with its log-softmax
// for numerical stability.
#pragma once

#include <cmath>
#include <vector>

#include "gradcam/ops/softmax.hpp"

namespace gradcam {

// logits [N, K], labels[n] in [0, K).
// forward:  L = -1/N sum_n log softmax(x_n)[y_n]
// backward: dx[n, k] = dL / N * (softmax(x_n)[k] - [k = y_n])
template <class T>
Var<T> cross_entropy(const Var<T>& logits, const std::vector<index_t>& labels) {
    detail::expect_rank(logits.shape(), 2, "cross_entropy logits", "N, classes");
    const index_t batch = logits.shape()[0], classes = logits.shape()[1];
    if (static_cast<index_t>(labels.size()) != batch || batch == 0)
        throw shape_error(detail::concat("cross_entropy: ", labels.size(), " labels for logits ",
                                         logits.shape()));
    for (std::size_t n = 0; n < labels.size(); ++n)
        if (labels[n] < 0 || labels[n] >= classes)
            throw argument_error(detail::concat("cross_entropy: label ", labels[n], " of image ", n,
                                                " is not a class of logits ", logits.shape()));
    Tensor<T> log_p = detail::log_softmax_values(logits.value(), 1);
    T total = 0;
    for (index_t n = 0; n < batch; ++n)
        total -= log_p[n * classes + labels[static_cast<std::size_t>(n)]];
    Tensor<T> loss(Shape{}, total / static_cast<T>(batch));
    return logits.tape().record(
        "cross_entropy", std::move(loss), {logits},
        [log_p = std::move(log_p), labels, batch, classes](const Node<T>&, const Tensor<T>& dy,
                                                           GradientSink<T>& sink) {
            if (!sink.wants(0)) return;
            T* dx = sink.of(0).data();
            const T scale = dy[0] / static_cast<T>(batch);
            for (index_t n = 0; n < batch; ++n)
                for (index_t k = 0; k < classes; ++k) {
                    const T target = k == labels[static_cast<std::size_t>(n)] ? T(1) : T(0);
                    dx[n * classes + k] += scale * (std::exp(log_p[n * classes + k]) - target);
                }
        });
}

}  // namespace gradcam
