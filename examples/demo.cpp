// The demo: one scene the project draws itself, explained by every method, one PNG each.
//
// Until the trained shapes model exists, the network is a small ResNet-style classifier with
// fixed seeded weights, so the maps show the methods at work, not a trained network's reasons.
#include <filesystem>
#include <iostream>

#include "gradcam/data/shapes.hpp"
#include "gradcam/gradcam.hpp"

using namespace gradcam;

// conv-bn-relu stem, two residual stages, global average pooling, linear classifier.
struct SmallResNet : nn::Module<float> {
    struct Block : nn::Module<float> {
        nn::Conv2d<float>& conv1;
        nn::BatchNorm2d<float>& bn1;
        nn::Conv2d<float>& conv2;
        nn::BatchNorm2d<float>& bn2;
        nn::Conv2d<float>& shortcut;
        Block(index_t in, index_t out)
            : conv1(submodule<nn::Conv2d<float>>("conv1", in, out, 3,
                                                 Conv2dOptions{.stride = 2, .padding = 1}, false)),
              bn1(submodule<nn::BatchNorm2d<float>>("bn1", out)),
              conv2(submodule<nn::Conv2d<float>>("conv2", out, out, 3, Conv2dOptions{.padding = 1},
                                                 false)),
              bn2(submodule<nn::BatchNorm2d<float>>("bn2", out)),
              shortcut(submodule<nn::Conv2d<float>>("shortcut", in, out, 1,
                                                    Conv2dOptions{.stride = 2}, false)) {}
        Var<float> forward(const Var<float>& x) override {
            return relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x));
        }
    };
    nn::Conv2d<float>& stem =
        submodule<nn::Conv2d<float>>("stem", 3, 16, 3, Conv2dOptions{.padding = 1});
    nn::ReLU<float>& relu1 = submodule<nn::ReLU<float>>("relu");
    Block& layer1 = submodule<Block>("layer1", 16, 32);
    Block& layer2 = submodule<Block>("layer2", 32, 64);
    nn::AdaptiveAvgPool2d<float>& pool = submodule<nn::AdaptiveAvgPool2d<float>>("avgpool", 1);
    nn::Linear<float>& fc = submodule<nn::Linear<float>>("fc", 64, shapes::class_count);

    Var<float> forward(const Var<float>& x) override {
        return fc(flatten(pool(layer2(layer1(relu1(stem(x)))))));
    }
};

int main(int argc, char** argv) {
    const std::filesystem::path out = argc > 1 ? argv[1] : "demo-output";
    std::filesystem::create_directories(out);
    std::vector<io::Image> figure;
    auto save = [&](const std::string& name, const io::Image& image) {
        io::write_png(out / name, image);
        std::cout << "wrote " << (out / name).string() << "\n";
        figure.push_back(io::resize(image, 2 * image.width, 2 * image.height));
    };

    const shapes::Scene scene = shapes::draw_scene(2017, {.size = 64, .objects = 2});
    SmallResNet net;
    net.initialise(42);
    const Tensor<float> input = io::to_input<float>(scene.image);
    const std::string layer = "layer2";

    save("scene.png", scene.image);
    const CamResult<float> grad = grad_cam(net, input, layer);
    std::cout << "explaining class " << grad.classes[0] << " ("
              << shapes::class_names[static_cast<std::size_t>(grad.classes[0])] << ") at layer '"
              << layer << "'\n";
    save("grad_cam.png", io::overlay(scene.image, grad.normalised.subtensor(0)));
    save("counterfactual.png",
         io::overlay(scene.image,
                     counterfactual_grad_cam(net, input, layer).normalised.subtensor(0)));
    save("cam.png", io::overlay(scene.image, cam(net, input, layer, "fc").normalised.subtensor(0)));
    save("grad_cam_plus_plus.png",
         io::overlay(scene.image, grad_cam_plus_plus(net, input, layer).normalised.subtensor(0)));
    save("layer_cam.png",
         io::overlay(scene.image, layer_cam(net, input, "layer1").normalised.subtensor(0)));
    save("vanilla_gradient.png",
         io::saliency_image(vanilla_gradient(net, input).gradient.subtensor(0)));
    save("deconvnet.png", io::saliency_image(deconvnet(net, input).gradient.subtensor(0)));
    const GuidedGradCamResult<float> guided = guided_grad_cam(net, input, layer);
    save("guided_backprop.png", io::saliency_image(guided.guided.subtensor(0)));
    save("guided_grad_cam.png", io::saliency_image(guided.map.subtensor(0)));
    io::write_png(out / "figure.png", io::side_by_side(figure));
    std::cout << "wrote " << (out / "figure.png").string() << " (all of the above, side by side)\n";
}
