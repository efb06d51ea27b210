// The CIFAR ResNets of He et al. (CVPR 2016, Sec. 4.2): ResNet-20/32/56, three stages of 16,
// 32 and 64 channels, and shortcuts without parameters ("option A": subsample, pad channels
// with zeros). Module names follow the common PyTorch implementation (conv1, bn1, layer1..3,
// linear), so its checkpoints load key for key.
#pragma once

#include <string>

#include "gradcam/nn/fusion.hpp"
#include "gradcam/nn/layers.hpp"
#include "gradcam/nn/sequential.hpp"
#include "gradcam/ops/arithmetic.hpp"
#include "gradcam/ops/reshape.hpp"

namespace gradcam::models {

template <class T>
class CifarBasicBlock : public nn::Module<T> {
  public:
    CifarBasicBlock(index_t in, index_t width, index_t stride)
        : conv1_(this->template submodule<nn::Conv2d<T>>("conv1", in, width, 3,
                                                         Conv2dOptions{.stride = stride, .padding = 1}, false)),
          bn1_(this->template submodule<nn::BatchNorm2d<T>>("bn1", width)),
          conv2_(this->template submodule<nn::Conv2d<T>>("conv2", width, width, 3, Conv2dOptions{.padding = 1}, false)),
          bn2_(this->template submodule<nn::BatchNorm2d<T>>("bn2", width)),
          stride_(stride),
          pad_(stride != 1 || in != width ? (width - in) / 2 : -1) {
        if (pad_ > 0 && in + 2 * pad_ != width)
            throw argument_error(detail::concat("CifarBasicBlock: the option-A shortcut cannot widen ", in,
                                                " channels to ", width));
    }

  protected:
    // Each convolution, batch norm (shortcut) and ReLU as one op where it may (nn/fusion.hpp).
    Var<T> forward(const Var<T>& x) override {
        const Var<T> out = nn::conv_batch_norm(conv1_, bn1_, x, &relu_);
        return nn::conv_batch_norm(conv2_, bn2_, out, &relu_, [&] {
            return pad_ >= 0 ? subsample_pad_channels(x, stride_, pad_) : x;
        });
    }

  private:
    nn::Conv2d<T>& conv1_;
    nn::BatchNorm2d<T>& bn1_;
    nn::Conv2d<T>& conv2_;
    nn::BatchNorm2d<T>& bn2_;
    nn::ReLU<T> relu_;      // not a submodule: PyTorch's blocks call F.relu, which has no name
    index_t stride_, pad_;  // pad < 0: identity shortcut
};

// depth = 6n + 2: ResNet-20 (n = 3), -32 (n = 5), -56 (n = 9).
template <class T>
class CifarResNet : public nn::Module<T> {
  public:
    explicit CifarResNet(int depth, index_t classes = 10)
        : conv1_(this->template submodule<nn::Conv2d<T>>("conv1", 3, 16, 3, Conv2dOptions{.padding = 1}, false)),
          bn1_(this->template submodule<nn::BatchNorm2d<T>>("bn1", 16)) {
        if (depth < 8 || (depth - 2) % 6 != 0)
            throw argument_error(detail::concat("CifarResNet: depth ", depth, " is not 6n + 2 (20, 32, 44, 56, ...)"));
        const int blocks = (depth - 2) / 6;
        index_t channels = 16;
        for (int stage = 0; stage < 3; ++stage) {
            const index_t width = index_t(16) << stage;
            auto& layer = this->template submodule<nn::Sequential<T>>("layer" + std::to_string(stage + 1));
            for (int b = 0; b < blocks; ++b) {
                layer.template emplace_back<CifarBasicBlock<T>>(channels, width, (stage > 0 && b == 0) ? 2 : 1);
                channels = width;
            }
            stages_[stage] = &layer;
        }
        linear_ = &this->template submodule<nn::Linear<T>>("linear", 64, classes);
    }

  protected:
    Var<T> forward(const Var<T>& x) override {
        Var<T> y = nn::conv_batch_norm(conv1_, bn1_, x, &relu_);
        for (nn::Sequential<T>* stage : stages_) y = (*stage)(y);
        return (*linear_)(flatten(adaptive_avg_pool2d(y, 1)));
    }

  private:
    nn::Conv2d<T>& conv1_;
    nn::BatchNorm2d<T>& bn1_;
    nn::ReLU<T> relu_;  // as in the blocks
    nn::Sequential<T>* stages_[3] = {};
    nn::Linear<T>* linear_ = nullptr;
};

}  // namespace gradcam::models
