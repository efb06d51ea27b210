// Every explanation method against PyTorch references (tests/data/*.golden.safetensors, made by
// scripts/make_goldens.py with hook-based PyTorch code), on a VGG-style net, a ResNet-style
// net with batch norm and residual additions, and a two-input VQA-style net.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <gradcam/models/cifar_resnet.hpp>

#include "small_nets.hpp"

using namespace gradcam;
using small_nets::check_close;
using small_nets::data_file;

namespace {

constexpr double tolerance = 1e-4;  // relative to each tensor's largest magnitude, float32

std::vector<index_t> golden_classes(const io::SafetensorsFile& golden) {
    Tensor<double> c = golden.read<double>("classes");
    return std::vector<index_t>(c.begin(), c.end());
}

enum class Maps { raw, all, raw_and_upsampled };

// Compares the maps of `result` with the golden's `<prefix>_raw`, `_upsampled`, `_normalised`.
void check_cam(const CamResult<float>& result, const io::SafetensorsFile& golden,
               const std::string& prefix, Maps maps = Maps::all) {
    check_close(result.raw, golden.read<float>(prefix + "_raw"), tolerance, prefix + "_raw");
    if (maps == Maps::raw) return;
    check_close(result.upsampled, golden.read<float>(prefix + "_upsampled"), tolerance,
                prefix + "_upsampled");
    if (maps == Maps::raw_and_upsampled) return;
    check_close(result.normalised, golden.read<float>(prefix + "_normalised"), tolerance,
                prefix + "_normalised");
}

// The checks shared by the two image classifiers.
template <class Net>
void check_image_classifier(const std::string& name) {
    Net net;
    load_state(net, data_file(name + ".weights.safetensors"));
    const io::SafetensorsFile golden(data_file(name + ".golden.safetensors"));
    const std::string layer = golden.metadata().at("layer");
    const std::string early = golden.metadata().at("early_layer");
    const Tensor<float> input = golden.read<float>("input");
    const std::vector<index_t> top = golden_classes(golden);

    SUBCASE("forward") {
        Tape<float> tape;
        tape.keep(layer);
        Var<float> logits = net(tape.constant(input));
        check_close(logits.value(), golden.read<float>("logits"), tolerance, "logits");
        check_close(tape.find(layer).value(), golden.read<float>("activations"), tolerance,
                    "activations");
    }
    SUBCASE("layer gradients") {
        LayerGradients<float> g = layer_gradients(net, input, layer, Target<float>());
        CHECK(g.classes == top);
        check_close(g.activations, golden.read<float>("activations"), tolerance, "activations");
        check_close(g.gradients, golden.read<float>("gradients"), tolerance, "gradients");
    }
    SUBCASE("Grad-CAM's weights by the classifier's block sums, without the layer's gradient") {
        Tape<float> tape;
        tape.record_from(layer);
        tape.expect_channel_sums(layer);
        const Var<float> logits = run_network(net, tape, tape.constant(input));
        std::vector<index_t> classes;
        const Var<float> score = Target<float>().score(logits, classes);
        const Var<float> A = tape.find(layer);
        const std::optional<Tensor<float>> sums = tape.channel_sums_by_blocks(score, A);
        REQUIRE(sums.has_value());
        Tensor<float> means = *sums;
        for (float& m : means) m /= static_cast<float>(A.shape()[2] * A.shape()[3]);
        check_close(means, spatial_mean(golden.read<float>("gradients")), tolerance, "means");
    }
    SUBCASE("Grad-CAM, default target: each image's top class") {
        CamResult<float> r = grad_cam(net, input, layer);
        CHECK(r.classes == top);
        check_cam(r, golden, "gradcam");
        for (float v : r.normalised) CHECK((v >= 0.0f && v <= 1.0f));
    }
    SUBCASE("Grad-CAM for a given class, and for a function of the outputs") {
        CamResult<float> r = grad_cam(net, input, layer, 3);
        CHECK(r.classes == std::vector<index_t>{3, 3});
        check_cam(r, golden, "gradcam_class3", Maps::raw);
        CamResult<float> by_list = grad_cam(net, input, layer, std::vector<index_t>{3, 3});
        check_close(by_list.raw, r.raw, 0.0, "class list");

        auto log_likelihood = [&top](const Var<float>& logits) {
            return sum(pick(log_softmax(logits, 1), top));
        };
        CamResult<float> f = grad_cam(net, input, layer, log_likelihood);
        CHECK(f.classes.empty());
        check_cam(f, golden, "gradcam_logsoftmax", Maps::raw);
    }
    SUBCASE("counterfactual Grad-CAM") {
        check_cam(counterfactual_grad_cam(net, input, layer), golden, "counterfactual",
                  Maps::raw_and_upsampled);
    }
    SUBCASE("an earlier layer") {
        check_cam(grad_cam(net, input, early), golden, "early_gradcam", Maps::raw);
    }
    SUBCASE("later CAM variants") {
        check_cam(grad_cam_plus_plus(net, input, layer), golden, "gradcampp", Maps::raw);
        check_cam(xgrad_cam(net, input, layer), golden, "xgradcam", Maps::raw);
        check_cam(hires_cam(net, input, layer), golden, "hirescam", Maps::raw);
        check_cam(layer_cam(net, input, layer), golden, "layercam", Maps::raw);
    }
    SUBCASE("input-space maps") {
        check_close(vanilla_gradient(net, input).gradient, golden.read<float>("vanilla_gradient"),
                    tolerance, "vanilla");
        check_close(guided_backprop(net, input).gradient, golden.read<float>("guided_backprop"),
                    tolerance, "guided");
        check_close(deconvnet(net, input).gradient, golden.read<float>("deconvnet"), tolerance,
                    "deconvnet");
    }
    SUBCASE("Guided Grad-CAM: one forward, two backward passes") {
        GuidedGradCamResult<float> r = guided_grad_cam(net, input, layer);
        CHECK(r.grad_cam.classes == top);
        check_close(r.map, golden.read<float>("guided_gradcam"), tolerance, "guided_gradcam");
        check_close(r.guided, golden.read<float>("guided_backprop"), tolerance, "guided");
        check_cam(r.grad_cam, golden, "gradcam");
    }
    SUBCASE("a batch explains each image as if alone") {
        for (index_t n = 0; n < 2; ++n) {
            const index_t plane = input.size() / 2;
            Tensor<float> single(
                Shape{1, 3, input.dim(2), input.dim(3)},
                std::span<const float>(input.data() + n * plane, static_cast<std::size_t>(plane)));
            CamResult<float> alone = grad_cam(net, single, layer);
            CHECK(alone.classes == std::vector<index_t>{top[static_cast<std::size_t>(n)]});
            Tensor<float> expected = golden.read<float>("gradcam_raw");
            const index_t map = expected.size() / 2;
            expected = Tensor<float>(
                Shape{1, expected.dim(1), expected.dim(2)},
                std::span<const float>(expected.data() + n * map, static_cast<std::size_t>(map)));
            check_close(alone.raw, expected, tolerance, "single image");
            Tensor<float> guided = guided_backprop(net, single).gradient;
            Tensor<float> guided_expected = golden.read<float>("guided_backprop");
            guided_expected = Tensor<float>(
                single.shape(), std::span<const float>(guided_expected.data() + n * plane,
                                                       static_cast<std::size_t>(plane)));
            check_close(guided, guided_expected, tolerance, "single image guided backprop");
        }
    }
}

}  // namespace

TEST_CASE("explain: VGG-style network against PyTorch") {
    check_image_classifier<small_nets::VggSmall<float>>("vgg_small");
}

TEST_CASE("explain: ResNet-style network (batch norm, residuals) against PyTorch") {
    check_image_classifier<small_nets::ResNetSmall<float>>("resnet_small");
}

TEST_CASE("explain: CAM on a global-average-pool + linear network, and its relation to Grad-CAM") {
    small_nets::ResNetSmall<float> net;
    load_state(net, data_file("resnet_small.weights.safetensors"));
    const io::SafetensorsFile golden(data_file("resnet_small.golden.safetensors"));
    const Tensor<float> input = golden.read<float>("input");
    CamResult<float> by_name = cam(net, input, "layer2", "fc");
    CHECK(by_name.classes == golden_classes(golden));
    check_cam(by_name, golden, "cam");
    CamResult<float> by_weight = cam(net, input, "layer2", net.fc().weight());
    check_close(by_weight.raw, by_name.raw, 0.0, "by weight");

    // With global average pooling, alpha_k = w_k / Z, so Grad-CAM = CAM / Z (Z = 8 * 8).
    Tensor<float> scaled = grad_cam(net, input, "layer2").raw;
    for (float& v : scaled) v *= 64.0f;
    check_close(scaled, by_name.raw, 1e-5, "Grad-CAM * Z vs CAM");
}

TEST_CASE("explain: a two-input VQA-style network, explained unchanged") {
    small_nets::VqaSmall<float> net;
    load_state(net, data_file("vqa_small.weights.safetensors"));
    const io::SafetensorsFile golden(data_file("vqa_small.golden.safetensors"));
    const std::string layer = golden.metadata().at("layer");
    const Tensor<float> image = golden.read<float>("input");
    const Tensor<float> question = golden.read<float>("question");
    // The network as the methods see it: (tape, image) -> answer scores.
    auto vqa = [&](Tape<float>& tape, const Var<float>& x) {
        return net.answer_scores(x, tape.constant(question));
    };

    Tape<float> tape;
    check_close(vqa(tape, tape.constant(image)).value(), golden.read<float>("logits"), tolerance,
                "logits");

    CamResult<float> top = grad_cam(vqa, image, layer);
    CHECK(top.classes == golden_classes(golden));
    check_cam(top, golden, "gradcam");
    check_close(layer_gradients(vqa, image, layer, Target<float>()).gradients,
                golden.read<float>("gradients"), tolerance, "gradients");

    // Any scalar of the outputs: how much more answer 2 scores than answer 0.
    auto margin = [](const Var<float>& answers) {
        return sum(select(answers, 1, 2) - select(answers, 1, 0));
    };
    check_cam(grad_cam(vqa, image, layer, margin), golden, "gradcam_answer_diff", Maps::raw);
}

TEST_CASE("explain: errors name what is wrong") {
    small_nets::VggSmall<float> net;
    net.initialise(1);
    const Tensor<float> input(Shape{1, 3, 32, 32}, 0.5f);
    CHECK_THROWS_WITH_AS(
        grad_cam(net, input, "features.80"),
        doctest::Contains("no layer named 'features.80' was computed; known names: features.0, "
                          "features.1, features.2"),
        lookup_error);
    CHECK_THROWS_WITH_AS(
        grad_cam(net, Tensor<float>(Shape{3, 32, 32}), "features.8"),
        "layer_gradient_means input must have rank 4 (N, C, H, W), got shape [3, 32, 32]",
        shape_error);
    CHECK_THROWS_WITH_AS(
        grad_cam(net, Tensor<float>(Shape{1, 4, 32, 32}), "features.8"),
        doctest::Contains(
            "layer 'features.0': conv2d: input [1, 4, 32, 32] and weight [8, 3, 3, 3]"),
        shape_error);
    CHECK_THROWS_WITH_AS(
        grad_cam(net, Tensor<float>(Shape{1, 3, 2, 2}), "features.8"),
        "layer 'features.9': max_pool2d: input [1, 16, 1, 1] is too small for kernel 2x2 "
        "with padding 0x0",
        shape_error);
    CHECK_THROWS_WITH_AS(
        grad_cam(net, input, "classifier.0"),
        "layer 'classifier.0' has output shape [1, 32]; class activation maps need a feature "
        "map [1, channels, h, w]",
        shape_error);
    CHECK_THROWS_WITH_AS(grad_cam(net, input, "features.8", 10),
                         "Target: class 10 is out of range for outputs [1, 10] (10 classes)",
                         argument_error);
    CHECK_THROWS_WITH_AS(grad_cam(net, input, "features.8", std::vector<index_t>{1, 2}),
                         "Target: 2 classes given for 1 images (outputs [1, 10])", shape_error);
    CHECK_THROWS_WITH_AS(
        grad_cam(net, input, "features.8", [](const Var<float>& y) { return y; }),
        "Target: the target function returned shape [1, 10]; it must return a scalar (sum the "
        "per-image scores)",
        shape_error);
    CHECK_THROWS_WITH_AS(cam(net, input, "features.8", "classifier.3"),
                         "cam: classifier weight [10, 32] does not fit the 16 channels of layer "
                         "'features.8' [1, 16, "
                         "16, 16]; expected [classes, 16]",
                         shape_error);
    CHECK_THROWS_WITH_AS(cam(net, input, "features.8", "fc"),
                         doctest::Contains("no parameter or buffer 'fc.weight'"), lookup_error);
    CHECK_THROWS_WITH_AS(
        cam(net, input, "features.8", net.tensor("classifier.3.weight"),
            [](const Var<float>& y) { return sum(y); }),
        doctest::Contains("cam: CAM weights channels by the classifier row of a class"),
        unsupported_error);
}

TEST_CASE("explain: the model builders match PyTorch: Bottleneck blocks, VGG with batch norm, CIFAR ResNet-20") {
    const io::SafetensorsFile golden(data_file("builders.safetensors"));
    auto check = [&](nn::Module<float>& net, const std::string& name, double map_tolerance = tolerance) {
        INFO(name);
        for (auto& [key, tensor] : net.state()) golden.read_into(name + ".weights." + key, *tensor);
        index_t stored = 0;
        for (const io::TensorInfo& entry : golden.entries()) stored += entry.key.starts_with(name + ".weights.");
        CHECK(stored == static_cast<index_t>(net.state().size()));  // no key of PyTorch's left over
        const nlohmann::json meta = nlohmann::json::parse(golden.metadata().at(name));
        const Tensor<float> input = golden.read<float>(name + ".input");
        Tape<float> tape;
        check_close(net(tape.constant(input)).value(), golden.read<float>(name + ".logits"), tolerance, "logits");
        check_close(grad_cam(net, input, meta.at("layer").get<std::string>()).raw,
                    golden.read<float>(name + ".gradcam_raw"), map_tolerance, "gradcam_raw");
    };
    models::ResNet<float> bottleneck({.bottleneck = true,
                                      .blocks = {1, 1},
                                      .widths = {4, 8},
                                      .stem_channels = 8,
                                      .stem_kernel = 3,
                                      .stem_stride = 1,
                                      .classes = 10});
    check(bottleneck, "bottleneck");
    constexpr int M = models::VggConfig::max_pool;
    models::Vgg<float> vgg_bn({.layers = {8, M, 16, 16, M},
                               .batch_norm = true,
                               .pooled_size = 2,
                               .hidden = {16},
                               .classes = 10});
    CHECK(vgg_bn.last_conv_layer() == "features.9");
    check(vgg_bn, "vgg_bn");
    // Option-A shortcuts; weights stored as F16. The map sums 64 channels that nearly cancel:
    // PyTorch's float map is itself 1.0e-4 (of its largest value) away from the same map in
    // float64, so it is compared at 2e-4, and ours against our float64 map at 1e-5 (it is 3e-9
    // away).
    models::CifarResNet<float> cifar(20);
    check(cifar, "cifar_resnet20", 2e-4);
    models::CifarResNet<double> cifar_double(20);
    for (auto& [key, tensor] : cifar_double.state()) *tensor = golden.read<double>("cifar_resnet20.weights." + key);
    const std::string layer = nlohmann::json::parse(golden.metadata().at("cifar_resnet20")).at("layer");
    const Tensor<float> input = golden.read<float>("cifar_resnet20.input");
    check_close(grad_cam(cifar, input, layer).raw.cast<double>(),
                grad_cam(cifar_double, input.cast<double>(), layer).raw, 1e-5, "float against float64");
}

TEST_CASE("explain: a module network left in training mode is explained in inference mode, untouched") {
    models::ResNet<float> net(small_nets::ResNetSmall<float>::config());
    load_state(net, data_file("resnet_small.weights.safetensors"));
    const io::SafetensorsFile golden(data_file("resnet_small.golden.safetensors"));
    const Tensor<float> input = golden.read<float>("input");
    const Tensor<float> running_before = net.tensor("layer1.0.bn1.running_mean");
    net.set_training(true);
    net.module("layer1.0.bn2").set_training_alone(false);  // a mixed setup must survive too
    check_close(grad_cam(net, input, "layer2").raw, golden.read<float>("gradcam_raw"), tolerance, "raw");
    CHECK(max_abs_difference(running_before, net.tensor("layer1.0.bn1.running_mean")) == 0.0f);
    CHECK(net.tensor("layer1.0.bn1.num_batches_tracked")[0] == 0.0f);
    CHECK(net.module("layer1.0.bn1").training());
    CHECK_FALSE(net.module("layer1.0.bn2").training());
}
