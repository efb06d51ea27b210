// What the explanation methods accept as a network: anything callable as net(tape, x) or
// net(x) that returns the output Var: an nn::Module, a lambda over ops, a multi-input model
// that makes its other inputs on the tape it is given.
#pragma once

#include <type_traits>

#include "gradcam/nn/module.hpp"
#include "gradcam/tape.hpp"

namespace gradcam {

template <class Net, class T>
concept Network = std::is_invocable_r_v<Var<T>, Net&, Tape<T>&, const Var<T>&> ||
                  std::is_invocable_r_v<Var<T>, Net&, const Var<T>&>;

// Runs the network for an explanation. A module network runs in inference mode whatever mode
// it was left in (batch statistics would make the images of a batch interact and would move
// the running statistics), and may fuse its layers where the forward records: the explanation
// reads values only by keep() and record_from(), and the target only the outputs. A callable
// is responsible for its own modules, and may look values up on the tape as it likes.
template <class T, Network<T> Net>
Var<T> run_network(Net& net, Tape<T>& tape, const Var<T>& input) {
    if constexpr (std::is_base_of_v<nn::Module<T>, Net>) {
        nn::TrainingMode<T> inference(net, false);
        tape.set_fusion_while_recording(true);
        return net(input);
    } else if constexpr (std::is_invocable_r_v<Var<T>, Net&, Tape<T>&, const Var<T>&>) {
        return net(tape, input);
    } else {
        return net(input);
    }
}

namespace detail {

// Explanations map back to an image batch: the input must be [N, C, H, W].
template <class T>
void expect_image_batch(const Tensor<T>& input, const char* method) {
    expect_rank(input.shape(), 4, concat(method, " input").c_str(), "N, C, H, W");
    if (input.size() == 0) throw shape_error(concat(method, ": empty input ", input.shape()));
}

}  // namespace detail
}  // namespace gradcam
