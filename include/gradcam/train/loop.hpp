// Supervised training with the library's own tape: one step is a forward in training mode,
// the cross-entropy loss, every parameter's gradient, and an optimizer update. Plus accuracy
// in inference mode, and the progress line a training program prints.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "gradcam/nn/module.hpp"
#include "gradcam/ops/loss.hpp"

namespace gradcam::train {

struct StepResult {
    double loss = 0;      // mean over the batch
    index_t correct = 0;  // images whose top class is the label
    index_t images = 0;
};

// Images whose highest-scoring class is their label.
template <class T>
index_t count_correct(const Tensor<T>& logits, const std::vector<index_t>& labels) {
    if (logits.rank() != 2 || logits.dim(0) != static_cast<index_t>(labels.size()))
        throw shape_error(gradcam::detail::concat("count_correct: ", labels.size(), " labels for logits ",
                                                  logits.shape(), "; expected [", labels.size(), ", classes]"));
    const index_t classes = logits.dim(1);
    index_t correct = 0;
    for (index_t n = 0; n < logits.dim(0); ++n) {
        const T* row = logits.data() + n * classes;
        correct +=
            (std::max_element(row, row + classes) - row) == labels[static_cast<std::size_t>(n)];
    }
    return correct;
}

using nn::TrainingMode;

template <class T, class Optimizer>
StepResult train_step(nn::Module<T>& net, Optimizer& optimizer, const Tensor<T>& images,
                      const std::vector<index_t>& labels) {
        if (images.rank() < 1 || images.dim(0) != static_cast<index_t>(labels.size()))
        throw shape_error(gradcam::detail::concat("train_step: ", labels.size(), " labels for images ",
                                                  images.shape()));
    TrainingMode<T> training(net, true);
    Tape<T> tape;
    tape.set_parameters_differentiable(true);
    const Var<T> logits = net(tape.constant(images));
    const Var<T> loss = cross_entropy(logits, labels);
    optimizer.step(tape.parameter_gradients(loss));
    return {static_cast<double>(loss.value()[0]), count_correct(logits.value(), labels),
            images.dim(0)};
}

// Share of images classified correctly, in inference mode, `batch` images at a time.
template <class T>
double accuracy(nn::Module<T>& net, const Tensor<T>& images, const std::vector<index_t>& labels,
                index_t batch = 64) {
    if (images.rank() < 1 || images.dim(0) != static_cast<index_t>(labels.size()) || labels.empty())
        throw shape_error(gradcam::detail::concat("accuracy: ", labels.size(),
                                                  " labels for images ", images.shape()));
    if (batch < 1)
        throw argument_error(gradcam::detail::concat("accuracy: batch size ", batch, " is not positive"));
    TrainingMode<T> inference(net, false);
    const index_t total = images.dim(0), per_image = images.size() / total;
    index_t correct = 0;
    for (index_t start = 0; start < total; start += batch) {
        const index_t count = std::min(batch, total - start);
        std::vector<index_t> dims = images.shape().dims();
        dims[0] = count;
        Tensor<T> slice(Shape(dims),
                        std::span<const T>(images.data() + start * per_image,
                                           static_cast<std::size_t>(count * per_image)));
        Tape<T> tape;
        const Var<T> logits = net(tape.constant(slice));
        correct += count_correct(
            logits.value(),
            std::vector<index_t>(labels.begin() + start, labels.begin() + start + count));
    }
    return static_cast<double>(correct) / static_cast<double>(total);
}

// Running averages since the last reset, formatted as one line:
// "epoch 2/8  step 40/125  loss 0.4312  accuracy 86.1%  830 images/s".
class Progress {
  public:
    Progress() { reset(); }

    void reset() {
        loss_sum_ = 0;
        correct_ = images_ = 0;
        started_ = std::chrono::steady_clock::now();
    }

    void add(const StepResult& step) {
        loss_sum_ += step.loss * static_cast<double>(step.images);
        correct_ += step.correct;
        images_ += step.images;
    }

    double loss() const { return images_ ? loss_sum_ / static_cast<double>(images_) : 0.0; }
    double accuracy() const {
        return images_ ? static_cast<double>(correct_) / static_cast<double>(images_) : 0.0;
    }
    double images_per_second() const {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
        return seconds > 0 ? static_cast<double>(images_) / seconds : 0.0;
    }

    std::string line(int epoch, int epochs, index_t step, index_t steps) const {
        char text[160];
        std::snprintf(text, sizeof text,
                      "epoch %d/%d  step %lld/%lld  loss %.4f  accuracy %.1f%%  %.0f images/s",
                      epoch, epochs, static_cast<long long>(step), static_cast<long long>(steps),
                      loss(), 100 * accuracy(), images_per_second());
        return text;
    }

  private:
    double loss_sum_ = 0;
    index_t correct_ = 0, images_ = 0;
    std::chrono::steady_clock::time_point started_;
};

}  // namespace gradcam::train
