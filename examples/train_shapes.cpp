// Trains the two shapes-world networks with the library's own tape and writes their weights:
// Adam with a warm-up and a cosine learning-rate decay, mini-batches of 32 fresh scenes every
// step (seeds from 0 up), accuracy measured on 1000 held-out scenes (seeds from 10^9). (SGD
// with momentum needs several times more steps to leave chance level on this task.)
// The committed weights in examples/models/ were made by running this program as it is.
//
//   train_shapes [output directory, default examples/models] [steps per epoch, default 250]
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <gradcam/gradcam.hpp>
#include <gradcam/models/shapes.hpp>
#include <gradcam/train/loop.hpp>
#include <gradcam/train/optimizers.hpp>
#include <iostream>

using namespace gradcam;

namespace {

constexpr index_t batch_size = 32;
constexpr std::uint64_t test_seed = 1'000'000'000;

// A linear warm-up over the first 150 steps, then a cosine decay to zero: without the warm-up,
// a peak rate this high leaves the network stuck at chance.
double learning_rate(double peak, index_t step, index_t steps) {
    const double warmup = std::min(1.0, static_cast<double>(step + 1) / 150.0);
    return warmup * 0.5 * peak *
           (1 +
            std::cos(3.14159265358979 * static_cast<double>(step) / static_cast<double>(steps)));
}

template <class Optimizer>
double train_and_test(nn::Module<float>& net, Optimizer& optimizer, double peak_rate, int epochs,
                      index_t steps_per_epoch, const shapes::LabelledBatch<float>& test) {
    const bool terminal = isatty(fileno(stdout));
    std::uint64_t seed = 0;
    const index_t total = epochs * steps_per_epoch;
    for (int epoch = 1; epoch <= epochs; ++epoch) {
        train::Progress progress;
        for (index_t step = 1; step <= steps_per_epoch; ++step) {
            optimizer.set_learning_rate(
                learning_rate(peak_rate, (epoch - 1) * steps_per_epoch + step - 1, total));
            const auto batch = shapes::labelled_batch<float>(seed, batch_size);
            seed += batch_size;
            progress.add(train::train_step(net, optimizer, batch.images, batch.labels));
            if (terminal)
                std::cout << "\r" << progress.line(epoch, epochs, step, steps_per_epoch)
                          << std::flush;
        }
        std::cout << (terminal ? "\r" : "")
                  << progress.line(epoch, epochs, steps_per_epoch, steps_per_epoch)
                  << "  test accuracy " << 100 * train::accuracy(net, test.images, test.labels)
                  << "%" << std::endl;
    }
    return train::accuracy(net, test.images, test.labels);
}

}  // namespace

int main(int argc, char** argv) {
    const std::filesystem::path out =
        argc > 1 ? argv[1] : std::filesystem::path(GRADCAM_SOURCE_DIR) / "examples/models";
    const index_t steps_per_epoch = argc > 2 ? std::stoll(argv[2]) : 250;
    std::filesystem::create_directories(out);
    const auto test = shapes::labelled_batch<float>(test_seed, 1000);

    std::cout << "ResNet-style network, Adam" << std::endl;
    models::ResNet<float> resnet(models::shapes_resnet_config());
    resnet.initialise(1);
    train::Adam<float> resnet_adam(resnet.parameters(), {});
    const double resnet_accuracy =
        train_and_test(resnet, resnet_adam, 6e-3, 6, steps_per_epoch, test);
    save_state(resnet, out / "shapes_resnet.safetensors",
               {{"network", "models::shapes_resnet_config"},
                {"test_accuracy", std::to_string(resnet_accuracy)}});

    std::cout << "VGG-style network, Adam" << std::endl;
    models::Vgg<float> vgg(models::shapes_vgg_config());
    vgg.initialise(2);
    train::Adam<float> vgg_adam(vgg.parameters(), {});
    const double vgg_accuracy = train_and_test(vgg, vgg_adam, 8e-3, 8, steps_per_epoch, test);
    save_state(vgg, out / "shapes_vgg.safetensors",
               {{"network", "models::shapes_vgg_config"},
                {"test_accuracy", std::to_string(vgg_accuracy)}});
    std::cout << "wrote " << (out / "shapes_resnet.safetensors").string() << " and "
              << (out / "shapes_vgg.safetensors").string() << "\n";
}
