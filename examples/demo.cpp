// The demo: the shipped shapes model (trained by train_shapes) explains the shipped two-object
// scene, as the paper's cat-and-dog figure does. It prints the top classes, then writes, for
// the two top classes, Grad-CAM and Guided Grad-CAM; for the top class, CAM, guided
// backpropagation and the counterfactual map; and one figure with all of them.
//
// The scene is shapes::draw_scene(146, {.objects = 2, .labels = {5, 3}}): a star (top) and a
// cross (bottom), written once to examples/data/two_shapes.png.
//
//   demo [output directory, default demo-output]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <gradcam/gradcam.hpp>
#include <gradcam/io/figure.hpp>
#include <gradcam/models/shapes.hpp>
#include <string>
#include <vector>

using namespace gradcam;

int main(int argc, char** argv) {
    const std::filesystem::path out = argc > 1 ? argv[1] : "demo-output";
    const std::filesystem::path source = GRADCAM_SOURCE_DIR;
    std::filesystem::create_directories(out);

    models::ResNet<float> net(models::shapes_resnet_config());
    load_state(net, source / "examples/models/shapes_resnet.safetensors");
    const io::Image photo = io::read_image(source / "examples/data/two_shapes.png");
    const Tensor<float> input = io::to_input<float>(photo);
    const std::string layer = net.last_stage();  // "layer3", the last convolutional stage

    // The classes, most probable first.
    Tape<float> tape;
    const Tensor<float> probability = softmax(net(tape.constant(input))).value();
    std::vector<index_t> ranked(shapes::class_count);
    for (index_t c = 0; c < shapes::class_count; ++c) ranked[static_cast<std::size_t>(c)] = c;
    std::sort(ranked.begin(), ranked.end(),
              [&](index_t a, index_t b) { return probability[a] > probability[b]; });
    auto name = [](index_t c) {
        return std::string(shapes::class_names[static_cast<std::size_t>(c)]);
    };
    std::printf("top classes:");
    for (std::size_t k = 0; k < 3; ++k)
        std::printf("  %s %.1f%%", name(ranked[k]).c_str(), 100 * probability[ranked[k]]);
    std::printf("\n");

    std::vector<io::Image> figure;
    auto save = [&](const std::string& file, const io::Image& image, const std::string& caption) {
        io::write_png(out / file, image);
        std::printf("wrote %s\n", (out / file).string().c_str());
        figure.push_back(
            io::with_caption(io::resize(image, 3 * image.width, 3 * image.height), caption));
    };
    save("scene.png", photo, "scene");

    for (std::size_t k = 0; k < 2; ++k) {
        const index_t c = ranked[k];
        const GuidedGradCamResult<float> r = guided_grad_cam(net, input, layer, c);
        save("grad_cam_" + name(c) + ".png", io::overlay(photo, r.grad_cam.normalised.subtensor(0)),
             "Grad-CAM " + name(c));
        save("guided_grad_cam_" + name(c) + ".png", io::saliency_image(r.map.subtensor(0)),
             "Guided Grad-CAM " + name(c));
    }
    const index_t top = ranked[0];
    save("cam_" + name(top) + ".png",
         io::overlay(photo, cam(net, input, layer, "fc", top).normalised.subtensor(0)),
         "CAM " + name(top));
    save("guided_backprop_" + name(top) + ".png",
         io::saliency_image(guided_backprop(net, input, top).gradient.subtensor(0)),
         "guided backprop " + name(top));
    save(
        "counterfactual_" + name(top) + ".png",
        io::overlay(photo, counterfactual_grad_cam(net, input, layer, top).normalised.subtensor(0)),
        "counterfactual " + name(top));

    io::write_png(out / "figure.png", io::grid(figure, 4));
    std::printf("wrote %s (all of the above)\n", (out / "figure.png").string().c_str());
}
