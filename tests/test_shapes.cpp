// The shapes world and the localization measures: scenes are pure functions of their seed
// with consistent ground truth; the measures give known answers on hand-made maps; and on the
// shipped model the paper's claims hold: Grad-CAM localizes objects better than a guess at
// the centre, and each class's map lies on that class's object.
#include <doctest/doctest.h>

#include <gradcam/explain/evaluation.hpp>
#include <gradcam/models/shapes.hpp>
#include <gradcam/train/loop.hpp>

#include "small_nets.hpp"

using namespace gradcam;

TEST_CASE("shapes: a scene is a pure function of its seed, with consistent ground truth") {
    const shapes::Scene a = shapes::draw_scene(17, {.objects = 2});
    const shapes::Scene b = shapes::draw_scene(17, {.objects = 2});
    CHECK(a.image.pixels == b.image.pixels);
    CHECK(shapes::draw_scene(18, {.objects = 2}).image.pixels != a.image.pixels);
    REQUIRE(a.objects.size() == 2);
    CHECK(a.objects[0].label != a.objects[1].label);

    for (std::uint64_t seed = 0; seed < 200; ++seed) {
        const shapes::Scene s =
            shapes::draw_scene(seed, {.size = 48, .objects = 1 + static_cast<int>(seed % 2)});
        CHECK(s.image.width == 48);
        CHECK(s.image.channels == 3);
        for (const shapes::SceneObject& o : s.objects) {
            // The box is the tight box of the mask, and the mask lies near the drawn disc.
            shapes::Box tight{48, 48, 0, 0};
            int pixels = 0;
            for (int y = 0; y < 48; ++y)
                for (int x = 0; x < 48; ++x)
                    if (o.mask[static_cast<std::size_t>(y * 48 + x)]) {
                        ++pixels;
                        tight = {std::min(tight.x0, x), std::min(tight.y0, y),
                                 std::max(tight.x1, x + 1), std::max(tight.y1, y + 1)};
                        CHECK(std::hypot(x + 0.5 - o.centre_x, y + 0.5 - o.centre_y) <=
                              o.radius + 1);
                    }
            CHECK(pixels > 10);
            CHECK((o.box.x0 == tight.x0 && o.box.y0 == tight.y0 && o.box.x1 == tight.x1 &&
                   o.box.y1 == tight.y1));
        }
        if (s.objects.size() == 2)
            for (std::size_t i = 0; i < s.objects[0].mask.size(); ++i)
                CHECK_FALSE(
                    (s.objects[0].mask[i] && s.objects[1].mask[i]));  // objects never overlap
    }
    const shapes::Scene forced = shapes::draw_scene(3, {.objects = 2, .labels = {5, 1}});
    CHECK(forced.objects[0].label == 5);
    CHECK(forced.objects[1].label == 1);
}

TEST_CASE("shapes: bad scene options are refused with a reason") {
    CHECK_THROWS_WITH_AS(shapes::draw_scene(1, {.size = 8}),
                         "draw_scene: size 8 is below 16 pixels", argument_error);
    CHECK_THROWS_WITH_AS(shapes::draw_scene(1, {.objects = 3}),
                         "draw_scene: 3 objects; 1 or 2 are supported", argument_error);
    CHECK_THROWS_WITH_AS(shapes::draw_scene(1, {.objects = 2, .labels = {2, 2}}),
                         "draw_scene: both objects have class 2; two objects must differ",
                         argument_error);
    CHECK_THROWS_WITH_AS(shapes::draw_scene(1, {.objects = 1, .labels = {6}}),
                         "draw_scene: label 6 is not a class (0 to 5)", argument_error);
    CHECK_THROWS_WITH_AS(shapes::draw_scene(1, {.min_radius = 0.3, .max_radius = 0.2}),
                         "draw_scene: radii 0.3 to 0.2 must satisfy 0 < min <= max <= 0.3",
                         argument_error);
}

TEST_CASE("evaluation: known answers on hand-made maps") {
    // Two blobs; the larger region (3x2) wins the box even though the smaller holds the peak.
    Tensor<float> map(Shape{6, 8});
    map(1, 1) = 1.0f;
    for (int y = 3; y < 5; ++y)
        for (int x = 4; x < 7; ++x) map(y, x) = 0.5f;
    map(5, 0) = 0.1f;  // below 15% of the maximum: ignored
    const shapes::Box box = evaluation::box_from_map(map);
    CHECK((box.x0 == 4 && box.y0 == 3 && box.x1 == 7 && box.y1 == 5));
    // Diagonal neighbours join a region (8-connectivity).
    map(2, 2) = 0.2f;
    map(3, 3) = 0.2f;
    const shapes::Box joined = evaluation::box_from_map(map);
    CHECK((joined.x0 == 1 && joined.y0 == 1 && joined.x1 == 7 && joined.y1 == 5));
    CHECK(evaluation::box_from_map(Tensor<float>(Shape{4, 4})).area() == 0);

    CHECK(shapes::iou({0, 0, 4, 4}, {2, 0, 6, 4}) == doctest::Approx(8.0 / 24.0));
    CHECK(evaluation::localizes(map, {1, 1, 7, 5}));
    CHECK_FALSE(evaluation::localizes(map, {0, 0, 2, 2}));

    std::vector<std::uint8_t> on_peak(48, 0), elsewhere(48, 0);
    on_peak[1 * 8 + 1] = 1;
    elsewhere[4 * 8 + 5] = 1;
    CHECK(evaluation::points_at(map, on_peak));
    CHECK_FALSE(evaluation::points_at(map, elsewhere));
    CHECK(evaluation::mass_share(map, on_peak, elsewhere) == doctest::Approx(1.0 / 1.5));
    CHECK(evaluation::mass_share(Tensor<float>(Shape{6, 8}), on_peak, elsewhere) == 0.5);
    CHECK_THROWS_WITH_AS(evaluation::points_at(map, std::vector<std::uint8_t>(5)),
                         "points_at: mask of 5 pixels for map [6, 8]", shape_error);

    const Tensor<float> centre = evaluation::centre_map<float>(9, 9);
    CHECK(std::max_element(centre.begin(), centre.end()) - centre.begin() == 4 * 9 + 4);
}

namespace {

// Checks the paper's claims for one shipped network and its last convolutional layer.
void check_claims(nn::Module<float>& net, const std::string& layer, double fraction) {
    constexpr index_t count = 200;
    const auto singles = shapes::scene_batch<float>(5'000'000, count);
    CHECK(train::accuracy(net, singles.input, singles.labels(0)) >= 0.95);

    evaluation::LocalizationScores grad, centre;
    grad.add(grad_cam(net, singles.input, layer, singles.labels(0)).upsampled, singles.scenes,
             fraction);
    centre.add(evaluation::centre_maps<float>(count, 64, 64), singles.scenes, fraction);
    MESSAGE(layer << ", threshold " << fraction << ": localization error Grad-CAM "
                  << grad.localization_error() << ", centre " << centre.localization_error()
                  << "; pointing Grad-CAM " << grad.pointing_accuracy() << ", centre "
                  << centre.pointing_accuracy());
    CHECK(grad.localization_error() < centre.localization_error() - 0.05);
    CHECK(grad.pointing_accuracy() > 0.8);

    const auto pairs = shapes::scene_batch<float>(6'000'000, count, {.objects = 2});
    evaluation::DiscriminationScores discrimination;
    for (std::size_t k = 0; k < 2; ++k)
        discrimination.add(grad_cam(net, pairs.input, layer, pairs.labels(k)).upsampled,
                           pairs.scenes, k);
    MESSAGE(layer << ", two objects: mean mass share " << discrimination.mean_share()
                  << ", majority rate " << discrimination.majority_rate());
    CHECK(discrimination.mean_share() > 0.7);
    CHECK(discrimination.majority_rate() > 0.8);
}

}  // namespace

TEST_CASE(
    "shapes: the shipped VGG-style model classifies, localizes (paper's 15% protocol), "
    "discriminates") {
    models::Vgg<float> net(models::shapes_vgg_config());
    load_state(net, std::string(GRADCAM_SOURCE_DIR) + "/examples/models/shapes_vgg.safetensors");
    check_claims(net, net.last_conv_layer(), 0.15);
}

TEST_CASE("shapes: the shipped ResNet-style model classifies, localizes, discriminates") {
    models::ResNet<float> net(models::shapes_resnet_config());
    load_state(net, std::string(GRADCAM_SOURCE_DIR) + "/examples/models/shapes_resnet.safetensors");
    // layer3 is 8x8: upsampled, its 15% region spills well past these small objects (IoU < 0.5
    // for every scene; see the README's table), so localization is checked at 50%.
    check_claims(net, "layer3", 0.5);
}
