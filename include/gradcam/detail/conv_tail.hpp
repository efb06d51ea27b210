// What a convolution does to each output value as it writes it: adds its bias and, when a batch
// norm at inference, a residual and a ReLU are fused after it (ops/fused.hpp), applies those:
//     y = relu?((conv + bias - mean) * scale + shift + residual?).
// Applied to a block of outputs while it is still in cache, by whichever lowering wrote it,
// instead of in passes of their own over the whole output.
#pragma once

#include <cstdint>

#include "gradcam/detail/eigen.hpp"

namespace gradcam::detail {

template <class T>
struct ConvTail {
    const T* bias = nullptr;                                        // per output channel
    const T* mean = nullptr, *scale = nullptr, *shift = nullptr;    // per output channel
    const T* residual = nullptr;  // laid out as the output
    bool relu = false;
    std::uint8_t* relu_mask = nullptr;  // with relu: [y > 0], laid out as the output, if wanted

    bool empty() const { return !bias && !mean && !residual && !relu; }

    // The tail of one image's group of output channels: channels from `first_channel` on, at
    // `offset` in the output.
    ConvTail part(index_t offset, index_t first_channel) const {
        ConvTail t = *this;
        if (bias) t.bias += first_channel;
        if (mean) {
            t.mean += first_channel;
            t.scale += first_channel;
            t.shift += first_channel;
        }
        if (residual) t.residual += offset;
        if (relu_mask) t.relu_mask += offset;
        return t;
    }

    // y[0, count), the outputs of channel k at `offset` (from the start of the part).
    void apply(T* y, index_t k, index_t offset, index_t count) const {
        auto v = array(y, count);
        if (bias) v += bias[k];
        const auto finish = [&](const auto& value) {
            if (relu) {
                v = value.max(T(0));
                if (relu_mask)
                    array(relu_mask + offset, count) = (v > T(0)).template cast<std::uint8_t>();
            } else {
                v = value;
            }
        };
        if (mean) {
            const auto normalised = (v - mean[k]) * scale[k] + shift[k];
            if (residual)
                finish(normalised + array(residual + offset, count));
            else
                finish(normalised);
        } else if (residual) {
            finish(v + array(residual + offset, count));
        } else if (relu) {
            finish(v);
        }
    }
};

}  // namespace gradcam::detail
