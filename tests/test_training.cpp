// The training path against PyTorch (tests/data/training.safetensors, made by
// scripts/make_goldens.py): batch norm with batch statistics, cross-entropy, the optimizers'
// update rules, and one whole training step of a small network in training mode.
#include <doctest/doctest.h>

#include <gradcam/models/shapes.hpp>
#include <gradcam/train/loop.hpp>
#include <gradcam/train/optimizers.hpp>

#include "small_nets.hpp"

using namespace gradcam;
using small_nets::check_close;

namespace {

const io::SafetensorsFile& golden() {
    static const io::SafetensorsFile file(small_nets::data_file("training.safetensors"));
    return file;
}

std::vector<index_t> labels(const std::string& key) {
    const Tensor<double> stored = golden().read<double>(key);
    return std::vector<index_t>(stored.begin(), stored.end());
}

}  // namespace

TEST_CASE("training: batch norm with batch statistics matches PyTorch") {
    Tensor<float> running_mean = golden().read<float>("batchnorm_train.running_mean");
    Tensor<float> running_var = golden().read<float>("batchnorm_train.running_var");
    Tape<float> tape;
    const Var<float> x = tape.variable(golden().read<float>("batchnorm_train.x"));
    const Var<float> w = tape.variable(golden().read<float>("batchnorm_train.w"));
    const Var<float> b = tape.variable(golden().read<float>("batchnorm_train.b"));
    const Var<float> y = batch_norm2d_training(x, w, b, running_mean, running_var, 0.1f, 1e-5f);
    check_close(y.value(), golden().read<float>("batchnorm_train.y"), 1e-5, "y");
    check_close(running_mean, golden().read<float>("batchnorm_train.running_mean_after"), 1e-6,
                "running mean");
    check_close(running_var, golden().read<float>("batchnorm_train.running_var_after"), 1e-6,
                "running var");
    const auto g =
        tape.gradient(sum(y * tape.constant(golden().read<float>("batchnorm_train.r"))), {x, w, b});
    check_close(g[0], golden().read<float>("batchnorm_train.dx"), 1e-5, "dx");
    check_close(g[1], golden().read<float>("batchnorm_train.dw"), 1e-5, "dweight");
    check_close(g[2], golden().read<float>("batchnorm_train.db"), 1e-5, "dbias");
}

TEST_CASE("training: cross-entropy matches PyTorch, and rejects bad labels") {
    Tape<float> tape;
    const Var<float> logits = tape.variable(golden().read<float>("cross_entropy.x"));
    const Var<float> loss = cross_entropy(logits, labels("cross_entropy.labels"));
    CHECK(loss.value()[0] ==
          doctest::Approx(golden().read<float>("cross_entropy.y")[0]).epsilon(1e-6));
    check_close(tape.gradient(loss, {logits})[0], golden().read<float>("cross_entropy.dx"), 1e-6,
                "dlogits");
    CHECK_THROWS_WITH_AS(cross_entropy(logits, {0, 1, 2, 3, 7}),
                         "cross_entropy: label 7 of image 4 is not a class of logits [5, 7]",
                         argument_error);
    CHECK_THROWS_WITH_AS(cross_entropy(logits, {0, 1}), "cross_entropy: 2 labels for logits [5, 7]",
                         shape_error);
}

TEST_CASE("training: SGD and Adam follow PyTorch's update rules") {
    const Tensor<double> grads = golden().read<double>("optim.grads");
    auto run = [&](auto make_optimizer, const std::string& name) {
        INFO(name);
        Tensor<double> p = golden().read<double>("optim.p0");
        auto optimizer =
            make_optimizer(std::vector<std::pair<std::string, Tensor<double>*>>{{"p", &p}});
        const Tensor<double> expected = golden().read<double>("optim." + name);
        for (index_t step = 0; step < 3; ++step) {
            train::ParameterGradients<double> g;
            g.emplace(&p, grads.subtensor(step));
            optimizer.step(g);
            check_close(p, expected.subtensor(step), 1e-6,
                        name + " step " + std::to_string(step + 1));
        }
    };
    using Params = std::vector<std::pair<std::string, Tensor<double>*>>;
    run(
        [](Params ps) {
            return train::Sgd<double>(
                ps, {.learning_rate = 0.1, .momentum = 0.9, .weight_decay = 0.01});
        },
        "sgd");
    run(
        [](Params ps) {
            return train::Sgd<double>(ps,
                                      {.learning_rate = 0.1, .momentum = 0.9, .nesterov = true});
        },
        "sgd_nesterov");
    run([](Params ps) { return train::Sgd<double>(ps, {.learning_rate = 0.1}); }, "sgd_plain");
    run(
        [](Params ps) {
            return train::Adam<double>(ps, {.learning_rate = 0.01, .weight_decay = 0.01});
        },
        "adam");

    Tensor<double> p(Shape{2});
    train::Sgd<double> sgd({{"layer.weight", &p}}, {});
    train::ParameterGradients<double> wrong;
    wrong.emplace(&p, Tensor<double>(Shape{3}));
    CHECK_THROWS_WITH_AS(
        sgd.step(wrong),
        "optimizer: gradient of 'layer.weight' has shape [3] but the parameter has [2]",
        shape_error);
}

namespace {

// The network of the golden's training step, with its weights before the step.
void build_step_network(nn::Sequential<float>& net) {
    net.emplace_back<nn::Conv2d<float>>(3, 4, 3, Conv2dOptions{.padding = 1});
    net.emplace_back<nn::BatchNorm2d<float>>(4);
    net.emplace_back<nn::ReLU<float>>();
    net.emplace_back<nn::MaxPool2d<float>>(Pool2dOptions{.kernel = 2});
    net.emplace_back<nn::Conv2d<float>>(4, 6, 3, Conv2dOptions{.padding = 1}, false);
    net.emplace_back<nn::BatchNorm2d<float>>(6);
    net.emplace_back<nn::ReLU<float>>();
    net.emplace_back<nn::AdaptiveAvgPool2d<float>>(1);
    net.emplace_back<nn::Flatten<float>>();
    net.emplace_back<nn::Linear<float>>(6, 5);
    for (auto& [key, tensor] : net.state()) golden().read_into("step.before." + key, *tensor);
}

}  // namespace

TEST_CASE("training: one step of a network in training mode matches PyTorch") {
    nn::Sequential<float> net;
    build_step_network(net);
    train::TrainingMode<float> training(net, true);
    Tape<float> tape;
    tape.set_parameters_differentiable(true);
    const Var<float> loss =
        cross_entropy(net(tape.constant(golden().read<float>("step.x"))), labels("step.labels"));
    CHECK(loss.value()[0] == doctest::Approx(golden().read<float>("step.loss")[0]).epsilon(1e-5));
    const auto grads = tape.parameter_gradients(loss);
    CHECK(grads.size() == net.parameters().size());
    for (auto& [key, parameter] : net.parameters()) {
        const Tensor<float> expected = golden().read<float>("step.grad." + key);
        if (max_abs(expected) < 1e-6f) {
            // A bias followed by batch norm: its true gradient is zero (the batch mean absorbs
            // it), and both sides hold only rounding noise.
            CHECK(max_abs(grads.at(parameter)) < 1e-6f);
            continue;
        }
        check_close(grads.at(parameter), expected, 1e-4, "gradient of " + key);
    }
    for (auto& [key, buffer] : net.buffers())
        check_close(*buffer, golden().read<float>("step.after." + key), 1e-5,
                    key + " after the step");
}

TEST_CASE("training: a parameter used twice gets the sum of both uses' gradients") {
    Tensor<double> w(Shape{1, 2}, {2.0, -1.0});
    Tape<double> tape;
    tape.set_parameters_differentiable(true);
    const Var<double> x = tape.constant(Tensor<double>(Shape{1, 2}, {3.0, 5.0}));
    // y = w.x + w.(2x): dy/dw = x + 2x
    const Var<double> y =
        sum(linear(x, tape.parameter(w)) + linear(scale(x, 2.0), tape.parameter(w)));
    const auto grads = tape.parameter_gradients(y);
    CHECK(grads.at(&w)(0, 0) == doctest::Approx(9.0));
    CHECK(grads.at(&w)(0, 1) == doctest::Approx(15.0));
}

TEST_CASE(
    "training: training mode is scoped, accuracy runs in inference mode, progress reads well") {
    models::ResNet<float> net(models::shapes_resnet_config());
    net.initialise(3);
    CHECK_FALSE(net.training());
    {
        train::TrainingMode<float> on(net, true);
        CHECK(net.training());
        CHECK(net.module("layer1.0.bn1").training());
    }
    CHECK_FALSE(net.training());

    const auto batch = shapes::scene_batch<float>(0, 8);
    train::Adam<float> adam(net.parameters(), {});
    const Tensor<float> running_before = net.tensor("bn1.running_mean");
    const train::StepResult step = train::train_step(net, adam, batch.input, batch.labels());
    CHECK(step.images == 8);
    CHECK(step.loss > 0);
    CHECK_FALSE(net.training());
    CHECK(max_abs_difference(running_before, net.tensor("bn1.running_mean")) >
          0);  // batch statistics moved it
    CHECK(net.tensor("bn1.num_batches_tracked")[0] == 1.0f);

    const Tensor<float> running_after = net.tensor("bn1.running_mean");
    const double accuracy = train::accuracy(net, batch.input, batch.labels(), 3);
    CHECK((accuracy >= 0.0 && accuracy <= 1.0));
    CHECK(max_abs_difference(running_after, net.tensor("bn1.running_mean")) ==
          0.0f);  // inference leaves it

    train::Progress progress;
    progress.add({.loss = 0.5, .correct = 3, .images = 4});
    progress.add({.loss = 1.5, .correct = 1, .images = 4});
    CHECK(progress.loss() == doctest::Approx(1.0));
    CHECK(progress.accuracy() == doctest::Approx(0.5));
    CHECK(progress.line(2, 8, 40, 125)
              .starts_with("epoch 2/8  step 40/125  loss 1.0000  accuracy 50.0%  "));
}

TEST_CASE("training: train_step (forward, loss, gradients, SGD update) matches PyTorch") {
    nn::Sequential<float> net;
    build_step_network(net);
    train::Sgd<float> sgd(net.parameters(), {.learning_rate = 0.1, .momentum = 0.9, .weight_decay = 1e-3});
    const train::StepResult step =
        train::train_step(net, sgd, golden().read<float>("step.x"), labels("step.labels"));
    CHECK(step.loss == doctest::Approx(golden().read<float>("step.loss")[0]).epsilon(1e-5));
    for (auto& [key, parameter] : net.parameters())
        check_close(*parameter, golden().read<float>("step.updated." + key), 1e-5, key + " after the update");
    CHECK_FALSE(net.training());
}

TEST_CASE("training: parameters the loss does not reach get no gradient and are not moved") {
    Tensor<double> used(Shape{1, 2}, {1.0, 2.0}), unused(Shape{1, 2}, {1.0, 1.0});
    Tape<double> tape;
    tape.set_parameters_differentiable(true);
    const Var<double> x = tape.constant(Tensor<double>(Shape{1, 2}, {3.0, 4.0}));
    const Var<double> loss = sum(linear(x, tape.parameter(used)));
    linear(x, tape.parameter(unused));  // computed, but not part of the loss
    const auto grads = tape.parameter_gradients(loss);
    CHECK(grads.size() == 1);
    CHECK(grads.contains(&used));
    train::Adam<double> adam({{"used", &used}, {"unused", &unused}}, {.learning_rate = 0.1});
    adam.step(grads);
    CHECK(unused(0, 0) == 1.0);  // as PyTorch, which skips parameters whose gradient is None
    CHECK(used(0, 0) != 1.0);
}

TEST_CASE("training: dropout drops about p of the values, scales the rest, and differs per layer") {
    nn::Sequential<float> net;
    net.emplace_back<nn::Dropout<float>>(0.25);
    net.emplace_back<nn::Dropout<float>>(0.25);
    const Tensor<float> ones(Shape{4, 1000}, 1.0f);
    {
        Tape<float> tape;
        CHECK(max_abs_difference(net(tape.constant(ones)).value(), ones) == 0.0f);  // inference
    }
    train::TrainingMode<float> training(net, true);
    Tape<float> tape;
    const Var<float> first = net[0](tape.constant(ones));
    index_t zeros = 0;
    for (float v : first.value()) {
        CHECK((v == 0.0f || v == doctest::Approx(1.0f / 0.75f)));
        zeros += v == 0.0f;
    }
    CHECK(static_cast<double>(zeros) / 4000 == doctest::Approx(0.25).epsilon(0.1));
    const Var<float> second = net[1](tape.constant(ones));
    CHECK(max_abs_difference(first.value(), second.value()) > 0.0f);  // own seeds, own masks
}

TEST_CASE("training: bad optimizer and training arguments are refused with a reason") {
    Tensor<float> p(Shape{2});
    using Params = std::vector<std::pair<std::string, Tensor<float>*>>;
    CHECK_THROWS_WITH_AS(train::Sgd<float>(Params{{"p", &p}}, {.learning_rate = -1}),
                         "Sgd: learning rate -1, momentum 0 and weight decay 0 must not be negative",
                         argument_error);
    CHECK_THROWS_WITH_AS(train::Sgd<float>(Params{{"p", &p}}, {.nesterov = true}),
                         "Sgd: Nesterov momentum needs a momentum above 0", argument_error);
    CHECK_THROWS_WITH_AS(train::Adam<float>(Params{{"p", &p}}, {.beta2 = 1.0}),
                         "Adam: learning rate 0.001, eps 1e-08 and weight decay 0 must not be negative, "
                         "betas (0.9, 1) must lie in [0, 1)",
                         argument_error);
    models::ResNet<float> net(models::shapes_resnet_config());
    const auto batch = shapes::scene_batch<float>(0, 2);
    train::Adam<float> adam(net.parameters(), {});
    CHECK_THROWS_WITH_AS(train::train_step(net, adam, batch.input, {1}),
                         "train_step: 1 labels for images [2, 3, 64, 64]", shape_error);
    CHECK_THROWS_WITH_AS(train::accuracy(net, batch.input, batch.labels(), 0),
                         "accuracy: batch size 0 is not positive", argument_error);
    CHECK_THROWS_WITH_AS(shapes::scene_batch<float>(0, 2, {.objects = 3}),
                         "draw_scene: 3 objects; 1 or 2 are supported", argument_error);
    CHECK_THROWS_WITH_AS(batch_norm2d_training(Tape<float>().constant(Tensor<float>(Shape{1, 2, 1, 1})), Var<float>(),
                                               Var<float>(), p, p),
                         "batch_norm2d (training): input [1, 2, 1, 1] has one value per channel; batch "
                         "statistics need more",
                         shape_error);
    CHECK_THROWS_WITH_AS(models::ResNet<float>({.blocks = {1, 0}, .widths = {4, 8}}),
                         "ResNet: stage 2 has 0 blocks of width 8; both must be positive", argument_error);
}
