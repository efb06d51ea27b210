// The standard layers, each a thin Module over one op. Parameter names and shapes follow
// torch.nn, so a state_dict of a network built the same way loads key for key.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>

#include "gradcam/nn/module.hpp"
#include "gradcam/ops/batch_norm.hpp"
#include "gradcam/ops/conv.hpp"
#include "gradcam/ops/dropout.hpp"
#include "gradcam/ops/linear.hpp"
#include "gradcam/ops/pool.hpp"
#include "gradcam/ops/relu.hpp"
#include "gradcam/ops/reshape.hpp"

namespace gradcam::detail {

// PyTorch's default for conv and linear layers: kaiming_uniform(a = sqrt(5)) for the weight,
// which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
template <class T>
void fill_uniform(Tensor<T>& t, double bound, Random& random) {
    for (T& v : t) v = static_cast<T>(random.uniform(-bound, bound));
}

// A 64-bit FNV-1a hash: a seed from a name that is the same on every platform.
inline std::uint64_t fnv1a(std::string_view text) {
    std::uint64_t hash = 0xcbf29ce484222325ull;
    for (char c : text) hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
    return hash;
}

// torchvision's initialisation of convolutions: kaiming_normal(mode=fan_out, relu).
template <class T>
void kaiming_normal_fan_out(Tensor<T>& weight, Random& random) {
    const double fan_out = static_cast<double>(weight.dim(0) * weight.dim(2) * weight.dim(3));
    for (T& v : weight) v = static_cast<T>(random.normal(0, std::sqrt(2.0 / fan_out)));
}

}  // namespace gradcam::detail

namespace gradcam::nn {

template <class T>
class Conv2d : public Module<T> {
  public:
    Conv2d(index_t in_channels, index_t out_channels, Size2 kernel, Conv2dOptions options = {},
           bool bias = true)
        : options_(options),
          weight_(this->add_parameter(
              "weight",
              Tensor<T>(Shape{out_channels, in_channels / std::max<index_t>(options.groups, 1),
                              kernel.h, kernel.w}))),
          bias_(bias ? &this->add_parameter("bias", Tensor<T>(Shape{out_channels})) : nullptr) {
        if (options.groups < 1 || in_channels % options.groups != 0 ||
            out_channels % options.groups != 0)
            throw argument_error(detail::concat(
                "Conv2d: ", in_channels, " input and ", out_channels,
                " output channels are not divisible by ", options.groups, " groups"));
    }

    Tensor<T>& weight() { return weight_; }
    Tensor<T>* bias() { return bias_; }
    const Conv2dOptions& options() const { return options_; }

  protected:
    Var<T> forward(const Var<T>& x) override {
        return conv2d(x, this->use(x, weight_), bias_ ? this->use(x, *bias_) : Var<T>(), options_);
    }
    void reset_parameters(Random& random) override {
        const double bound = 1.0 / std::sqrt(static_cast<double>(weight_.size() / weight_.dim(0)));
        detail::fill_uniform(weight_, bound, random);
        if (bias_) detail::fill_uniform(*bias_, bound, random);
    }

  private:
    Conv2dOptions options_;
    Tensor<T>& weight_;
    Tensor<T>* bias_;
};

template <class T>
class Linear : public Module<T> {
  public:
    Linear(index_t in_features, index_t out_features, bool bias = true)
        : weight_(this->add_parameter("weight", Tensor<T>(Shape{out_features, in_features}))),
          bias_(bias ? &this->add_parameter("bias", Tensor<T>(Shape{out_features})) : nullptr) {}

    Tensor<T>& weight() { return weight_; }
    Tensor<T>* bias() { return bias_; }

  protected:
    Var<T> forward(const Var<T>& x) override {
        return linear(x, this->use(x, weight_), bias_ ? this->use(x, *bias_) : Var<T>());
    }
    void reset_parameters(Random& random) override {
        const double bound = 1.0 / std::sqrt(static_cast<double>(weight_.dim(1)));
        detail::fill_uniform(weight_, bound, random);
        if (bias_) detail::fill_uniform(*bias_, bound, random);
    }

  private:
    Tensor<T>& weight_;
    Tensor<T>* bias_;
};

// state_dict keys: weight, bias, running_mean, running_var, num_batches_tracked.
template <class T>
class BatchNorm2d : public Module<T> {
  public:
    explicit BatchNorm2d(index_t channels, double eps = 1e-5, double momentum = 0.1)
        : eps_(eps),
          momentum_(momentum),
          weight_(this->add_parameter("weight", Tensor<T>(Shape{channels}, T(1)))),
          bias_(this->add_parameter("bias", Tensor<T>(Shape{channels}))),
          running_mean_(this->add_buffer("running_mean", Tensor<T>(Shape{channels}))),
          running_var_(this->add_buffer("running_var", Tensor<T>(Shape{channels}, T(1)))),
          batches_tracked_(this->add_buffer("num_batches_tracked", Tensor<T>(Shape{}))) {}

    Tensor<T>& weight() { return weight_; }
    Tensor<T>& bias() { return bias_; }
    Tensor<T>& running_mean() { return running_mean_; }
    Tensor<T>& running_var() { return running_var_; }
    double eps() const { return eps_; }
    double momentum() const { return momentum_; }

  protected:
    // Training mode normalises with the batch's statistics and updates the running ones.
    Var<T> forward(const Var<T>& x) override {
        const Var<T> gamma = this->use(x, weight_), beta = this->use(x, bias_);
        if (!this->training())
            return batch_norm2d(x, gamma, beta, running_mean_, running_var_, static_cast<T>(eps_));
        Var<T> y = batch_norm2d_training(x, gamma, beta, running_mean_, running_var_,
                                         static_cast<T>(momentum_), static_cast<T>(eps_));
        batches_tracked_[0] += T(1);  // after the op, which may refuse the input
        return y;
    }
    void reset_parameters(Random&) override {
        weight_.fill(T(1));
        bias_.fill(T(0));
        running_mean_.fill(T(0));
        running_var_.fill(T(1));
        batches_tracked_.fill(T(0));
    }

  private:
    double eps_, momentum_;
    Tensor<T>& weight_;
    Tensor<T>& bias_;
    Tensor<T>& running_mean_;
    Tensor<T>& running_var_;
    Tensor<T>& batches_tracked_;
};

template <class T>
class ReLU : public Module<T> {
  protected:
    Var<T> forward(const Var<T>& x) override { return relu(x); }
};

template <class T>
class MaxPool2d : public Module<T> {
  public:
    explicit MaxPool2d(Pool2dOptions options) : options_(options) {}

  protected:
    Var<T> forward(const Var<T>& x) override { return max_pool2d(x, options_); }

  private:
    Pool2dOptions options_;
};

template <class T>
class AvgPool2d : public Module<T> {
  public:
    explicit AvgPool2d(Pool2dOptions options) : options_(options) {}

  protected:
    Var<T> forward(const Var<T>& x) override { return avg_pool2d(x, options_); }

  private:
    Pool2dOptions options_;
};

template <class T>
class AdaptiveAvgPool2d : public Module<T> {
  public:
    explicit AdaptiveAvgPool2d(Size2 output_size) : output_size_(output_size) {}

  protected:
    Var<T> forward(const Var<T>& x) override { return adaptive_avg_pool2d(x, output_size_); }

  private:
    Size2 output_size_;
};

template <class T>
class Flatten : public Module<T> {
  protected:
    Var<T> forward(const Var<T>& x) override { return flatten(x); }
};

// The identity at inference; in training, zeroes values with probability p. The masks are
// seeded: by initialise(), else by the layer's path, so two dropout layers never share masks
// and a training run repeats exactly (for one thread count).
template <class T>
class Dropout : public Module<T> {
  public:
    explicit Dropout(double p = 0.5) : p_(p) {
        if (p < 0 || p >= 1)
            throw argument_error(detail::concat("Dropout: p = ", p, " is outside [0, 1)"));
    }
    double p() const { return p_; }

  protected:
    Var<T> forward(const Var<T>& x) override {
        if (!this->training()) return dropout(x);
        if (!random_) random_.emplace(detail::fnv1a(this->path()));
        return dropout(x, p_, *random_);
    }
    void reset_parameters(Random& random) override { random_.emplace(random.next()); }

  private:
    double p_;
    std::optional<Random> random_;
};

template <class T>
class Identity : public Module<T> {
  protected:
    Var<T> forward(const Var<T>& x) override { return x; }
};

}  // namespace gradcam::nn
