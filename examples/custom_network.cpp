// Any network is explainable: here a two-input model (image + question vector, as in visual
// question answering) written directly with ops instead of modules. The target layer is
// named with `named`, and the explained score is any scalar of the outputs.
#include <gradcam/gradcam.hpp>
#include <iostream>

using namespace gradcam;

int main() {
    Random random(7);
    auto random_tensor = [&](Shape shape, double scale) {
        Tensor<float> t(std::move(shape));
        for (float& v : t) v = static_cast<float>(random.normal(0, scale));
        return t;
    };
    // Parameters the model owns (here random; load_state or safetensors for real ones).
    const Tensor<float> conv_w = random_tensor({16, 3, 3, 3}, 0.3),
                        conv_b = random_tensor({16}, 0.1);
    const Tensor<float> question_w = random_tensor({16, 10}, 0.3),
                        answer_w = random_tensor({4, 16}, 0.3);
    const Tensor<float> question = random_tensor({1, 10}, 1.0);

    // The network as the methods see it: (tape, image) -> outputs. The second input and the
    // parameters enter on the same tape.
    auto vqa = [&](Tape<float>& tape, const Var<float>& image) {
        Var<float> features =
            named(relu(conv2d(image, tape.parameter(conv_w), tape.parameter(conv_b),
                              {.stride = 2, .padding = 1})),
                  "image_features");
        Var<float> pooled = flatten(adaptive_avg_pool2d(features, 1));
        Var<float> gate = relu(linear(tape.constant(question), tape.parameter(question_w)));
        return linear(pooled * gate, tape.parameter(answer_w));
    };

    const Tensor<float> image = random_tensor({1, 3, 32, 32}, 1.0);
    // Explain the log-probability of answer 2, a scalar of the outputs.
    auto answer_log_probability = [](const Var<float>& answers) {
        return sum(select(log_softmax(answers), 1, 2));
    };
    const CamResult<float> map = grad_cam(vqa, image, "image_features", answer_log_probability);
    std::cout << "map " << map.raw.shape() << " at the layer, " << map.upsampled.shape()
              << " at the input\n";
}
