// Measuring explanations against known object locations, with the protocols of the Grad-CAM
// paper (Sec. 4.1, from CAM): weakly-supervised localization (threshold the map at 15% of its
// maximum, box the largest connected region, a hit at IoU >= 0.5), the pointing game (Zhang
// et al. 2016: the map's maximum falls on the object), and the share of a map's mass that lies
// on one object rather than another (class discrimination in two-object scenes).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gradcam/data/shapes.hpp"
#include "gradcam/tensor.hpp"

namespace gradcam::evaluation {

using shapes::Box;

namespace detail {

template <class T>
void expect_map(const Tensor<T>& map, const char* op) {
    if (map.rank() != 2 || map.size() == 0)
        throw shape_error(
            gradcam::detail::concat(op, ": expected a map [H, W], got ", map.shape()));
}

template <class T>
void expect_mask(const Tensor<T>& map, const std::vector<std::uint8_t>& mask, const char* op) {
    if (static_cast<index_t>(mask.size()) != map.size())
        throw shape_error(gradcam::detail::concat(op, ": mask of ", mask.size(), " pixels for map ",
                                                  map.shape()));
}

}  // namespace detail

// The box around the largest 8-connected region where map >= fraction * max(map). An empty box
// when the map has no positive value.
template <class T>
Box box_from_map(const Tensor<T>& map, double fraction = 0.15) {
    detail::expect_map(map, "box_from_map");
    const int height = static_cast<int>(map.dim(0)), width = static_cast<int>(map.dim(1));
    const T top = *std::max_element(map.begin(), map.end());
    if (!(top > 0)) return Box{};
    const T threshold = static_cast<T>(fraction) * top;
    std::vector<int> region(static_cast<std::size_t>(map.size()), -1);
    std::vector<int> stack;
    Box best;
    int best_size = 0, regions = 0;
    for (int start = 0; start < width * height; ++start) {
        if (map[start] < threshold || region[static_cast<std::size_t>(start)] >= 0) continue;
        Box box{width, height, 0, 0};
        int size = 0;
        stack.assign(1, start);
        region[static_cast<std::size_t>(start)] = regions;
        while (!stack.empty()) {
            const int p = stack.back();
            stack.pop_back();
            const int x = p % width, y = p / width;
            ++size;
            box = Box{std::min(box.x0, x), std::min(box.y0, y), std::max(box.x1, x + 1),
                      std::max(box.y1, y + 1)};
            for (int dy = -1; dy <= 1; ++dy)
                for (int dx = -1; dx <= 1; ++dx) {
                    const int nx = x + dx, ny = y + dy, q = ny * width + nx;
                    if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
                    if (map[q] < threshold || region[static_cast<std::size_t>(q)] >= 0) continue;
                    region[static_cast<std::size_t>(q)] = regions;
                    stack.push_back(q);
                }
        }
        if (size > best_size) {
            best_size = size;
            best = box;
        }
        ++regions;
    }
    return best;
}

// Weakly-supervised localization: does the map's box overlap the object's box with IoU >= 0.5?
template <class T>
bool localizes(const Tensor<T>& map, const Box& truth, double fraction = 0.15) {
    return shapes::iou(box_from_map(map, fraction), truth) >= 0.5;
}

// Pointing game: does the map's maximum (the first, in row-major order) lie within `tolerance`
// pixels of the object's mask? (Zhang et al. allow 15 pixels at ImageNet resolution.)
template <class T>
bool points_at(const Tensor<T>& map, const std::vector<std::uint8_t>& mask, int tolerance = 0) {
    detail::expect_map(map, "points_at");
    detail::expect_mask(map, mask, "points_at");
    const index_t width = map.dim(1), height = map.dim(0);
    const index_t at = std::max_element(map.begin(), map.end()) - map.begin();
    const index_t px = at % width, py = at / width;
    for (index_t y = std::max<index_t>(0, py - tolerance);
         y <= std::min(height - 1, py + tolerance); ++y)
        for (index_t x = std::max<index_t>(0, px - tolerance);
             x <= std::min(width - 1, px + tolerance); ++x)
            if (mask[static_cast<std::size_t>(y * width + x)] &&
                (x - px) * (x - px) + (y - py) * (y - py) <= tolerance * tolerance)
                return true;
    return false;
}

// The map's positive mass on `object` as a share of its mass on `object` and `other` together
// (0.5 when the map has no mass on either).
template <class T>
double mass_share(const Tensor<T>& map, const std::vector<std::uint8_t>& object,
                  const std::vector<std::uint8_t>& other) {
    detail::expect_map(map, "mass_share");
    detail::expect_mask(map, object, "mass_share");
    detail::expect_mask(map, other, "mass_share");
    double on_object = 0, on_other = 0;
    for (index_t i = 0; i < map.size(); ++i) {
        const double v = std::max(static_cast<double>(map[i]), 0.0);
        on_object += object[static_cast<std::size_t>(i)] ? v : 0.0;
        on_other += other[static_cast<std::size_t>(i)] ? v : 0.0;
    }
    return on_object + on_other > 0 ? on_object / (on_object + on_other) : 0.5;
}

// The map of the centre baseline, a guess that uses no network: a Gaussian bump at the image
// centre with sigma = size / 10, so that its 15% region is a box of about 0.4 x size, the
// size of a typical shapes-world object's box.
template <class T>
Tensor<T> centre_map(index_t height, index_t width) {
    Tensor<T> map(Shape{height, width});
    const double cy = (height - 1) / 2.0, cx = (width - 1) / 2.0;
    const double sy = height / 10.0, sx = width / 10.0;
    for (index_t y = 0; y < height; ++y)
        for (index_t x = 0; x < width; ++x)
            map(y, x) = static_cast<T>(std::exp(
                -0.5 * ((y - cy) * (y - cy) / (sy * sy) + (x - cx) * (x - cx) / (sx * sx))));
    return map;
}

// The centre map for each of `count` images, [count, height, width].
template <class T>
Tensor<T> centre_maps(index_t count, index_t height, index_t width) {
    const Tensor<T> one = centre_map<T>(height, width);
    Tensor<T> maps = Tensor<T>::uninitialized(Shape{count, height, width});
    for (index_t n = 0; n < count; ++n) std::copy(one.begin(), one.end(), maps.data() + n * one.size());
    return maps;
}

// Running totals of the localization metrics over single-object scenes.
struct LocalizationScores {
    index_t images = 0, localized = 0, pointed = 0;
    double localization_error() const {
        return images ? 1.0 - static_cast<double>(localized) / images : 0.0;
    }
    double pointing_accuracy() const {
        return images ? static_cast<double>(pointed) / images : 0.0;
    }

    // maps [N, H, W], one per scene, each explaining the class of the scene's first object.
    // The pointing tolerance: 15 pixels at 224, scaled to the shapes world's 64 pixels.
    static constexpr int pointing_tolerance = 4;

    template <class T>
    void add(const Tensor<T>& maps, const std::vector<shapes::Scene>& scenes,
             double fraction = 0.15) {
        check_batch(maps, scenes.size(), "LocalizationScores::add");
        for (std::size_t n = 0; n < scenes.size(); ++n) {
            const Tensor<T> map = maps.subtensor(static_cast<index_t>(n));
            const shapes::SceneObject& object = scenes[n].objects.front();
            localized += localizes(map, object.box, fraction);
            pointed += points_at(map, object.mask, pointing_tolerance);
            ++images;
        }
    }

    template <class T>
    static void check_batch(const Tensor<T>& maps, std::size_t scenes, const char* op) {
        if (maps.rank() != 3 || maps.dim(0) != static_cast<index_t>(scenes))
            throw shape_error(gradcam::detail::concat(op, ": maps ", maps.shape(), " for ", scenes,
                                                      " scenes; expected [", scenes, ", H, W]"));
    }
};

// Running totals of class discrimination over two-object scenes: for maps explaining the
// class of object `k`, the share of mass on object k rather than on the other object.
struct DiscriminationScores {
    index_t maps = 0, majority = 0;
    double share_sum = 0;
    double mean_share() const { return maps ? share_sum / static_cast<double>(maps) : 0.0; }
    // Maps that put more than half of their mass on the requested object.
    double majority_rate() const {
        return maps ? static_cast<double>(majority) / static_cast<double>(maps) : 0.0;
    }

    template <class T>
    void add(const Tensor<T>& maps_for_object, const std::vector<shapes::Scene>& scenes,
             std::size_t k) {
        LocalizationScores::check_batch(maps_for_object, scenes.size(), "DiscriminationScores::add");
        if (k > 1)
            throw argument_error(gradcam::detail::concat("DiscriminationScores::add: object ", k,
                                                         " of a two-object scene (0 or 1)"));
        for (std::size_t n = 0; n < scenes.size(); ++n) {
            if (scenes[n].objects.size() != 2)
                throw argument_error(gradcam::detail::concat("DiscriminationScores::add: scene ", n,
                                                             " has ", scenes[n].objects.size(),
                                                             " objects, not 2"));
            const double share =
                mass_share(maps_for_object.subtensor(static_cast<index_t>(n)),
                           scenes[n].objects[k].mask, scenes[n].objects[1 - k].mask);
            share_sum += share;
            majority += share > 0.5;
            ++maps;
        }
    }
};

}  // namespace gradcam::evaluation
