// Optimizers with PyTorch's update rules: SGD with momentum (torch.optim.SGD) and Adam
// (Kingma & Ba 2015, torch.optim.Adam). They update a module's parameters in place from the
// gradients a tape computed (Tape::parameter_gradients).
#pragma once

#include <cmath>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gradcam/tensor.hpp"

namespace gradcam::train {

template <class T>
using ParameterGradients = std::unordered_map<const Tensor<T>*, Tensor<T>>;

namespace detail {

// The gradient of one parameter, plus weight decay; nullptr when the loss did not reach it
// (PyTorch skips such parameters).
template <class T>
const Tensor<T>* gradient_of(const ParameterGradients<T>& grads, const Tensor<T>* parameter,
                             const std::string& name) {
    auto it = grads.find(parameter);
    if (it == grads.end()) return nullptr;
    if (it->second.shape() != parameter->shape())
        throw shape_error(gradcam::detail::concat("optimizer: gradient of '", name, "' has shape ",
                                                  it->second.shape(), " but the parameter has ",
                                                  parameter->shape()));
    return &it->second;
}

}  // namespace detail

struct SgdOptions {
    double learning_rate = 0.01;
    double momentum = 0.0;
    double weight_decay = 0.0;
    bool nesterov = false;
};

// g = grad + weight_decay * p;  b = momentum * b + g (b = g on the first step);
// p -= lr * (nesterov ? g + momentum * b : b).
template <class T>
class Sgd {
  public:
        Sgd(std::vector<std::pair<std::string, Tensor<T>*>> parameters, SgdOptions options)
        : parameters_(std::move(parameters)), options_(options), velocity_(parameters_.size()) {
        if (!(options.learning_rate >= 0) || !(options.momentum >= 0) || !(options.weight_decay >= 0))
            throw argument_error(gradcam::detail::concat("Sgd: learning rate ", options.learning_rate, ", momentum ",
                                                         options.momentum, " and weight decay ", options.weight_decay,
                                                         " must not be negative"));
        if (options.nesterov && options.momentum == 0)
            throw argument_error("Sgd: Nesterov momentum needs a momentum above 0");
    }

    void step(const ParameterGradients<T>& grads) {
        for (std::size_t i = 0; i < parameters_.size(); ++i) {
            auto& [name, p] = parameters_[i];
            const Tensor<T>* grad = detail::gradient_of(grads, p, name);
            if (!grad) continue;
            Tensor<T>& b = velocity_[i];
                        const bool first = b.empty();
            if (first && options_.momentum != 0) b = Tensor<T>(p->shape());
            for (index_t k = 0; k < p->size(); ++k) {
                double g = (*grad)[k] + options_.weight_decay * (*p)[k];
                if (options_.momentum != 0) {
                    b[k] = static_cast<T>(first ? g : options_.momentum * b[k] + g);
                    g = options_.nesterov ? g + options_.momentum * b[k] : b[k];
                }
                (*p)[k] = static_cast<T>((*p)[k] - options_.learning_rate * g);
            }
        }
    }

    void set_learning_rate(double rate) { options_.learning_rate = rate; }
    double learning_rate() const { return options_.learning_rate; }

  private:
    std::vector<std::pair<std::string, Tensor<T>*>> parameters_;
    SgdOptions options_;
    std::vector<Tensor<T>> velocity_;
};

struct AdamOptions {
    double learning_rate = 1e-3;
    double beta1 = 0.9, beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;  // L2, added to the gradient (not AdamW)
};

// g = grad + weight_decay * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
// p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
template <class T>
class Adam {
  public:
        Adam(std::vector<std::pair<std::string, Tensor<T>*>> parameters, AdamOptions options)
        : parameters_(std::move(parameters)), options_(options), state_(parameters_.size()) {
        if (!(options.learning_rate >= 0) || !(options.eps >= 0) || !(options.weight_decay >= 0) ||
            !(options.beta1 >= 0 && options.beta1 < 1) || !(options.beta2 >= 0 && options.beta2 < 1))
            throw argument_error(gradcam::detail::concat("Adam: learning rate ", options.learning_rate, ", eps ",
                                                         options.eps, " and weight decay ", options.weight_decay,
                                                         " must not be negative, betas (", options.beta1, ", ",
                                                         options.beta2, ") must lie in [0, 1)"));
    }

    void step(const ParameterGradients<T>& grads) {
        for (std::size_t i = 0; i < parameters_.size(); ++i) {
            auto& [name, p] = parameters_[i];
            const Tensor<T>* grad = detail::gradient_of(grads, p, name);
            if (!grad) continue;
            State& s = state_[i];
            if (s.steps == 0) {
                s.m = Tensor<T>(p->shape());
                s.v = Tensor<T>(p->shape());
            }
            ++s.steps;
            const double correction1 = 1 - std::pow(options_.beta1, s.steps);
            const double correction2 = 1 - std::pow(options_.beta2, s.steps);
            for (index_t k = 0; k < p->size(); ++k) {
                const double g = (*grad)[k] + options_.weight_decay * (*p)[k];
                s.m[k] = static_cast<T>(options_.beta1 * s.m[k] + (1 - options_.beta1) * g);
                s.v[k] = static_cast<T>(options_.beta2 * s.v[k] + (1 - options_.beta2) * g * g);
                const double denominator = std::sqrt(s.v[k] / correction2) + options_.eps;
                (*p)[k] = static_cast<T>((*p)[k] - options_.learning_rate * (s.m[k] / correction1) /
                                                       denominator);
            }
        }
    }

    void set_learning_rate(double rate) { options_.learning_rate = rate; }
    double learning_rate() const { return options_.learning_rate; }

  private:
    struct State {
        Tensor<T> m, v;
        int steps = 0;
    };
    std::vector<std::pair<std::string, Tensor<T>*>> parameters_;
    AdamOptions options_;
    std::vector<State> state_;
};

}  // namespace gradcam::train
