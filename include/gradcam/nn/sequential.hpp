// Sequential: children named "0", "1", ... applied in order, as torch.nn.Sequential, so a VGG
// built from it has the layer names of torchvision's ("features.28"). A convolution followed
// by a batch norm (and a ReLU), or by a ReLU, runs as one op where it may (nn/fusion.hpp).
#pragma once

#include <memory>
#include <string>

#include "gradcam/nn/fusion.hpp"
#include "gradcam/nn/module.hpp"

namespace gradcam::nn {

template <class T>
class Sequential : public Module<T> {
  public:
    Sequential() = default;

    // Appends a layer constructed in place; returns it.
    template <class M, class... Args>
    M& emplace_back(Args&&... args) {
        return this->template submodule<M>(std::to_string(size()), std::forward<Args>(args)...);
    }
    void push_back(std::shared_ptr<Module<T>> layer) {
        this->add_module(std::to_string(size()), std::move(layer));
    }

    std::size_t size() { return this->children().size(); }
    Module<T>& operator[](std::size_t i) {
        if (i >= size())
            throw lookup_error(detail::concat("Sequential '", this->path(), "': index ", i,
                                              " is out of range for ", size(), " layers"));
        return *this->children()[i].second;
    }

  protected:
    Var<T> forward(const Var<T>& x) override {
        Var<T> y = x;
        for (std::size_t i = 0; i < size(); ++i) {
            auto* conv = layer_as<Conv2d<T>>(i);
            auto* bn = layer_as<BatchNorm2d<T>>(i + 1);
            auto* relu = layer_as<ReLU<T>>(i + 1);
            if (conv && bn) {
                auto* bn_relu = layer_as<ReLU<T>>(i + 2);
                y = conv_batch_norm(*conv, *bn, y, bn_relu);
                i += bn_relu ? 2 : 1;
            } else if (conv && relu) {
                y = conv_relu(*conv, *relu, y);
                ++i;
            } else {
                y = (*this)[i](y);
            }
        }
        return y;
    }

  private:
    template <class M>
    M* layer_as(std::size_t i) {
        return i < size() ? dynamic_cast<M*>(&(*this)[i]) : nullptr;
    }
};

}  // namespace gradcam::nn
