// The paper's two claims, measured where the ground truth is known: Grad-CAM localizes objects
// from class labels alone (weakly-supervised localization with the paper's protocol, and the
// pointing game), and it is class-discriminative (in two-object scenes, each class's map lies
// on that class's object). Uses both shipped shapes models; prints a table for each.
//
//   evaluate_shapes [scenes, default 1000]
#include <cstdio>
#include <functional>
#include <gradcam/explain/evaluation.hpp>
#include <gradcam/gradcam.hpp>
#include <gradcam/models/shapes.hpp>
#include <gradcam/train/loop.hpp>
#include <string>
#include <vector>

using namespace gradcam;

namespace {

constexpr std::uint64_t single_seed = 2'000'000'000, pair_seed = 3'000'000'000;
constexpr index_t batch = 50;

// A method: maps [N, H, W] at input resolution for a batch and one class per image.
using Method = std::function<Tensor<float>(nn::Module<float>&, const Tensor<float>&,
                                           const std::vector<index_t>&)>;

struct NamedMethod {
    std::string name;
    Method maps;
};

// The methods to compare on a network whose main Grad-CAM layer is `layer`, with an earlier
// layer `early`, and a global-average-pooled layer `pooled` feeding the classifier `fc`.
std::vector<NamedMethod> methods(const std::string& layer, const std::string& early,
                                 const std::string& pooled, const std::string& fc) {
    return {
        {"Grad-CAM (" + layer + ")",
         [=](auto& net, const auto& x, const auto& c) {
             return grad_cam(net, x, layer, c).upsampled;
         }},
        {"Grad-CAM (" + early + ")",
         [=](auto& net, const auto& x, const auto& c) {
             return grad_cam(net, x, early, c).upsampled;
         }},
        {"counterfactual (" + layer + ")",
         [=](auto& net, const auto& x, const auto& c) {
             return counterfactual_grad_cam(net, x, layer, c).upsampled;
         }},
        {"CAM (" + pooled + ")",
         [=](auto& net, const auto& x, const auto& c) {
             return cam(net, x, pooled, fc, c).upsampled;
         }},
        {"guided backprop",
         [](auto& net, const auto& x, const auto& c) {
             return channel_max_magnitude(guided_backprop(net, x, c).gradient);
         }},
        {"vanilla gradient",
         [](auto& net, const auto& x, const auto& c) {
             return channel_max_magnitude(vanilla_gradient(net, x, c).gradient);
         }},
        {"centre baseline",
         [](auto&, const auto& x, const auto&) {
             return evaluation::centre_maps<float>(x.dim(0), x.dim(2), x.dim(3));
         }},
    };
}

// Scores every method on `count` single-object and `count` two-object scenes; prints a table.
void evaluate(const std::string& title, nn::Module<float>& net, const std::vector<NamedMethod>& all,
              index_t count) {
    std::vector<evaluation::LocalizationScores> localization(all.size()), at_half(all.size());
    std::vector<evaluation::DiscriminationScores> discrimination(all.size());
    index_t correct = 0;
    for (index_t start = 0; start < count; start += batch) {
        const index_t n = std::min(batch, count - start);
        const auto single = shapes::scene_batch<float>(single_seed + static_cast<std::uint64_t>(start), n);
        const auto pair =
            shapes::scene_batch<float>(pair_seed + static_cast<std::uint64_t>(start), n, {.objects = 2});
        const std::vector<index_t> truth = single.labels(0);
        Tape<float> tape;
        correct += train::count_correct(net(tape.constant(single.input)).value(), truth);
        for (std::size_t m = 0; m < all.size(); ++m) {
            const Tensor<float> maps = all[m].maps(net, single.input, truth);
            localization[m].add(maps, single.scenes);
            at_half[m].add(maps, single.scenes, 0.5);
            for (std::size_t k = 0; k < 2; ++k)
                discrimination[m].add(all[m].maps(net, pair.input, pair.labels(k)), pair.scenes, k);
        }
    }
    std::printf("%s: classification accuracy %.1f%% on the single-object scenes\n\n", title.c_str(),
                100.0 * static_cast<double>(correct) / static_cast<double>(count));
    std::printf(
        "| method | localization error | (threshold 50%%) | pointing game | mass on the requested "
        "object "
        "| maps mostly on it |\n");
    std::printf("|---|---|---|---|---|---|\n");
    for (std::size_t m = 0; m < all.size(); ++m)
        std::printf("| %s | %.1f%% | %.1f%% | %.1f%% | %.1f%% | %.1f%% |\n", all[m].name.c_str(),
                    100 * localization[m].localization_error(),
                    100 * at_half[m].localization_error(),
                    100 * localization[m].pointing_accuracy(), 100 * discrimination[m].mean_share(),
                    100 * discrimination[m].majority_rate());
    std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
    const index_t count = argc > 1 ? std::stoll(argv[1]) : 1000;
    const std::string models_dir = std::string(GRADCAM_SOURCE_DIR) + "/examples/models/";
    std::printf(
        "%lld single-object and %lld two-object scenes; every map explains the ground-truth "
        "class.\n",
        static_cast<long long>(count), static_cast<long long>(count));
    std::printf(
        "Localization: box of the largest region above 15%% of the map's maximum, a hit at IoU >= "
        "0.5.\n");
    std::printf(
        "Pointing: the map's maximum within %d pixels of the object. Two objects: the map's mass "
        "on the\n",
        evaluation::LocalizationScores::pointing_tolerance);
    std::printf("requested object's mask as a share of its mass on both masks.\n\n");

    models::Vgg<float> vgg(models::shapes_vgg_config());
    load_state(vgg, models_dir + "shapes_vgg.safetensors");
    evaluate("VGG-style network", vgg,
             methods(vgg.last_conv_layer(), "features.6", "features", "classifier.0"), count);

    models::ResNet<float> resnet(models::shapes_resnet_config());
    load_state(resnet, models_dir + "shapes_resnet.safetensors");
    evaluate("ResNet-style network", resnet, methods("layer3", "layer2", "layer3", "fc"), count);
}
