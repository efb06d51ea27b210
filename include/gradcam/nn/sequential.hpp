// Sequential: children named "0", "1", ... applied in order, as torch.nn.Sequential, so a VGG
// built from it has the layer names of torchvision's ("features.28").
#pragma once

#include <memory>
#include <string>

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
        for (auto& [name, layer] : this->children()) y = (*layer)(y);
        return y;
    }
};

}  // namespace gradcam::nn
