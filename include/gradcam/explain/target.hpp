// What an explanation explains: the score of a class for each image (by default the top
// class), or any scalar a user computes from the network outputs (a caption's
// log-likelihood, a VQA answer's score, a difference of two logits).
#pragma once

#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "gradcam/ops/reduce.hpp"

namespace gradcam {

template <class T>
class Target {
  public:
    using Function = std::function<Var<T>(const Var<T>& outputs)>;

    // Each image's highest-scoring class.
    Target() = default;
    // The same class for every image.
    Target(index_t class_index) : classes_{class_index}, single_class_(true) {}  // NOLINT: implicit
    // One class per image.
    Target(std::vector<index_t> class_per_image) : classes_(std::move(class_per_image)) {
        if (classes_.empty()) throw argument_error("Target: an empty list of classes");
    }
    // Any scalar function of the outputs. For a batch, return the sum of the per-image scores:
    // images do not interact, so each image's map then comes from its own score.
    template <class F>
    requires(std::is_invocable_r_v<Var<T>, F&, const Var<T>&> && !std::is_arithmetic_v<F>)
        Target(F score)
        : function_(std::move(score)) {}  // NOLINT

    bool is_class_target() const { return !function_; }

    // The class explained for each image of `outputs` ([N, classes]).
    std::vector<index_t> classes_for(const Tensor<T>& outputs) const {
        if (function_)
            throw unsupported_error("Target: a function target has no class; pass a class index");
        if (outputs.rank() != 2)
            throw shape_error(detail::concat("Target: class targets need outputs of shape [N, ",
                                             "classes], got ", outputs.shape(),
                                             "; pass a function of the outputs instead"));
        const index_t images = outputs.dim(0), classes = outputs.dim(1);
        std::vector<index_t> chosen;
        if (classes_.empty()) {
            for (index_t n = 0; n < images; ++n) {
                const T* row = outputs.data() + n * classes;
                chosen.push_back(std::max_element(row, row + classes) - row);
            }
            return chosen;
        }
        if (single_class_)
            chosen.assign(static_cast<std::size_t>(images), classes_[0]);
        else
            chosen = classes_;
        if (static_cast<index_t>(chosen.size()) != images)
            throw shape_error(detail::concat("Target: ", classes_.size(), " classes given for ",
                                             images, " images (outputs ", outputs.shape(), ")"));
        for (index_t c : chosen)
            if (c < 0 || c >= classes)
                throw argument_error(detail::concat("Target: class ", c,
                                                    " is out of range for outputs ",
                                                    outputs.shape(), " (", classes, " classes)"));
        return chosen;
    }

    // The scalar to differentiate: sum over images of the class scores y[n, c_n], or the user's
    // function. `classes` receives the explained classes (empty for a function target).
    Var<T> score(const Var<T>& outputs, std::vector<index_t>& classes) const {
        if (function_) {
            classes.clear();
            Var<T> s = function_(outputs);
            if (s.shape().numel() != 1)
                throw shape_error(
                    detail::concat("Target: the target function returned shape ", s.shape(),
                                   "; it must return a scalar (sum the per-image scores)"));
            return s;
        }
        classes = classes_for(outputs.value());
        return sum(pick(outputs, classes));
    }

  private:
    std::vector<index_t> classes_;
    bool single_class_ = false;
    Function function_;
};

}  // namespace gradcam
