// Trains the two shapes-world networks with the library's own tape and writes their weights:
// Adam with a warm-up and a cosine learning-rate decay, mini-batches of 32 fresh scenes every
// step (seeds from 0 up), accuracy measured on 1000 held-out scenes (seeds from 10^9). (SGD
// with momentum needs several times more steps to leave chance level on this task.)
//
//   train_shapes [output directory, default shapes-models] [steps per epoch, default 250]
//
// `train_shapes examples/models` on this repository's 2-core machine, with two OpenMP threads,
// wrote the committed weights and examples/models/training-log.txt.
#include <unistd.h>

#include <algorithm>
#include <chrono>
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

// Trains `net` for `epochs` x `steps_per_epoch` steps, printing a progress line per epoch with
// the test accuracy; returns the final test accuracy.
template <class Optimizer>
double train_and_test(nn::Module<float>& net, Optimizer& optimizer, double peak_rate, int epochs,
                      index_t steps_per_epoch, const shapes::SceneBatch<float>& test) {
    const bool terminal = isatty(fileno(stdout));
    const auto started = std::chrono::steady_clock::now();
    std::uint64_t seed = 0;
    const index_t total = epochs * steps_per_epoch;
    double test_accuracy = 0;
    for (int epoch = 1; epoch <= epochs; ++epoch) {
        train::Progress progress;
        for (index_t step = 1; step <= steps_per_epoch; ++step) {
            optimizer.set_learning_rate(
                learning_rate(peak_rate, (epoch - 1) * steps_per_epoch + step - 1, total));
            const auto batch = shapes::scene_batch<float>(seed, batch_size);
            seed += batch_size;
            progress.add(train::train_step(net, optimizer, batch.input, batch.labels()));
            if (terminal)
                std::cout << "\r" << progress.line(epoch, epochs, step, steps_per_epoch)
                          << std::flush;
        }
        test_accuracy = train::accuracy(net, test.input, test.labels());
        std::cout << (terminal ? "\r" : "")
                  << progress.line(epoch, epochs, steps_per_epoch, steps_per_epoch)
                  << "  test accuracy " << 100 * test_accuracy << "%" << std::endl;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::cout << "trained in " << seconds << " s" << std::endl;
    return test_accuracy;
}

}  // namespace

int main(int argc, char** argv) {
    const std::filesystem::path out = argc > 1 ? argv[1] : "shapes-models";
    const index_t steps_per_epoch = argc > 2 ? std::stoll(argv[2]) : 250;
    std::filesystem::create_directories(out);
    const auto started = std::chrono::steady_clock::now();
    const auto test = shapes::scene_batch<float>(test_seed, 1000);

    std::cout << "ResNet-style network, Adam" << std::endl;
    models::ResNet<float> resnet(models::shapes_resnet_config());
    resnet.initialise(1);
    train::Adam<float> resnet_adam(resnet.parameters(), {});
    const double resnet_accuracy =
        train_and_test(resnet, resnet_adam, 6e-3, 7, steps_per_epoch, test);
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
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::cout << "wrote shapes_resnet.safetensors and shapes_vgg.safetensors in " << out.string()
              << "; " << seconds << " s in all" << std::endl;
}
