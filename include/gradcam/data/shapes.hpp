// A synthetic world with known ground truth: RGB scenes of one or two shapes (circle, square,
// triangle, cross, ring, star) on textured, noisy backgrounds, with each object's class,
// bounding box and pixel mask. Every scene is a pure function of its seed.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string_view>
#include <vector>

#include "gradcam/detail/parallel.hpp"
#include "gradcam/io/image.hpp"
#include "gradcam/random.hpp"

namespace gradcam::shapes {

inline constexpr std::array<std::string_view, 6> class_names{"circle", "square", "triangle",
                                                             "cross",  "ring",   "star"};
inline constexpr int class_count = static_cast<int>(class_names.size());

// A pixel box [x0, x1) x [y0, y1).
struct Box {
    int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
    int area() const { return std::max(0, x1 - x0) * std::max(0, y1 - y0); }
};

inline double iou(const Box& a, const Box& b) {
    const Box overlap{std::max(a.x0, b.x0), std::max(a.y0, b.y0), std::min(a.x1, b.x1),
                      std::min(a.y1, b.y1)};
    const int shared = overlap.area();
    const int joined = a.area() + b.area() - shared;
    return joined > 0 ? static_cast<double>(shared) / joined : 0.0;
}

struct SceneObject {
    int label = 0;
    Box box;                         // tight box around the mask
    std::vector<std::uint8_t> mask;  // size*size, 1 where the object covers at least half a pixel
    double centre_x = 0, centre_y = 0, radius = 0, angle = 0;
    std::array<std::uint8_t, 3> colour{};
};

struct Scene {
    io::Image image;
    std::vector<SceneObject> objects;
};

struct SceneOptions {
    int size = 64;
    int objects = 1;           // 1 or 2; two objects always have different classes
    double min_radius = 0.12;  // object radius as a fraction of the image size
    double max_radius = 0.22;
    std::vector<int> labels = {};  // the classes to draw; random when empty
    double texture = 1.0;          // strength of the background's smooth field and stripes
};

namespace detail {

struct Point {
    double x, y;
};

// Even-odd rule point-in-polygon test.
inline bool inside_polygon(const std::vector<Point>& polygon, double x, double y) {
    bool inside = false;
    for (std::size_t i = 0, j = polygon.size() - 1; i < polygon.size(); j = i++) {
        const Point& a = polygon[i];
        const Point& b = polygon[j];
        if ((a.y > y) != (b.y > y) && x < (b.x - a.x) * (y - a.y) / (b.y - a.y) + a.x)
            inside = !inside;
    }
    return inside;
}

inline std::vector<Point> regular_polygon(int corners, double outer, double inner) {
    // inner > 0 alternates outer and inner radii (a star); the first corner points up.
    std::vector<Point> points;
    const int vertices = inner > 0 ? 2 * corners : corners;
    for (int k = 0; k < vertices; ++k) {
        const double r = (inner > 0 && k % 2 == 1) ? inner : outer;
        const double a = std::numbers::pi / 2 + 2 * std::numbers::pi * k / vertices;
        points.push_back({r * std::cos(a), r * std::sin(a)});
    }
    return points;
}

// Is the point (u, v), in the object's own frame (unit radius), inside a shape of `label`?
inline bool inside_shape(int label, double u, double v) {
    static const std::vector<Point> triangle = regular_polygon(3, 1.0, 0.0);
    static const std::vector<Point> star = regular_polygon(5, 1.0, 0.42);
    const double r2 = u * u + v * v;
    switch (label) {
        case 0:
            return r2 <= 0.85 * 0.85;
        case 1:
            return std::max(std::abs(u), std::abs(v)) <= 0.72;
        case 2:
            return inside_polygon(triangle, u, v);
        case 3:
            return (std::abs(u) <= 0.28 && std::abs(v) <= 0.95) ||
                   (std::abs(v) <= 0.28 && std::abs(u) <= 0.95);
        case 4:
            return r2 <= 0.95 * 0.95 && r2 >= 0.55 * 0.55;
        default:
            return inside_polygon(star, u, v);
    }
}

inline double colour_distance(const std::array<double, 3>& a,
                              const std::array<std::uint8_t, 3>& b) {
    double d = 0;
    for (int c = 0; c < 3; ++c) d += (a[c] - b[c]) * (a[c] - b[c]);
    return std::sqrt(d);
}

}  // namespace detail

// Draws the scene of `seed`. Objects never overlap; their colours are random (never a cue to
// the class) and far enough from the background's mean colour to be visible.
inline Scene draw_scene(std::uint64_t seed, const SceneOptions& options = {}) {
    if (options.size < 16)
        throw argument_error(
            gradcam::detail::concat("draw_scene: size ", options.size, " is below 16 pixels"));
    if (!(options.texture >= 0 && options.texture <= 4))
        throw argument_error(gradcam::detail::concat("draw_scene: texture ", options.texture, " is outside [0, 4]"));
    if (options.objects < 1 || options.objects > 2)
        throw argument_error(gradcam::detail::concat("draw_scene: ", options.objects,
                                                     " objects; 1 or 2 are supported"));
    if (!options.labels.empty() && static_cast<int>(options.labels.size()) != options.objects)
        throw argument_error(gradcam::detail::concat("draw_scene: ", options.labels.size(),
                                                     " labels for ", options.objects, " objects"));
    if (!(options.min_radius > 0 && options.min_radius <= options.max_radius &&
          options.max_radius <= 0.3))
        throw argument_error(gradcam::detail::concat("draw_scene: radii ", options.min_radius,
                                                     " to ", options.max_radius,
                                                     " must satisfy 0 < min <= max <= 0.3"));
    if (options.labels.size() == 2 && options.labels[0] == options.labels[1])
        throw argument_error(gradcam::detail::concat("draw_scene: both objects have class ",
                                                     options.labels[0],
                                                     "; two objects must differ"));
    for (int label : options.labels)
        if (label < 0 || label >= class_count)
            throw argument_error(gradcam::detail::concat(
                "draw_scene: label ", label, " is not a class (0 to ", class_count - 1, ")"));
    Random random(seed * 0x9E3779B97F4A7C15ull + 0x5CE4E);
    const int size = options.size;
    Scene scene;

    // Background: a base colour, a smooth random field on a 5x5 grid, stripes, pixel noise.
    std::array<double, 3> base{};
    for (double& c : base) c = random.uniform(40, 215);
    constexpr int grid = 5;
    std::array<std::array<double, grid * grid>, 3> field{};
    for (auto& channel : field)
        for (double& v : channel) v = options.texture * random.uniform(-35, 35);
    const double stripe_angle = random.uniform(0, std::numbers::pi);
    const double stripe_period = random.uniform(5, 14),
                 stripe_strength = options.texture * random.uniform(0, 18);
    std::vector<double> background(static_cast<std::size_t>(size * size * 3));
    for (int y = 0; y < size; ++y)
        for (int x = 0; x < size; ++x) {
            const double gx = x * (grid - 1.0) / (size - 1), gy = y * (grid - 1.0) / (size - 1);
            const int ix = std::min(static_cast<int>(gx), grid - 2),
                      iy = std::min(static_cast<int>(gy), grid - 2);
            const double fx = gx - ix, fy = gy - iy;
            const double stripe =
                stripe_strength *
                std::sin(2 * std::numbers::pi *
                         (x * std::cos(stripe_angle) + y * std::sin(stripe_angle)) / stripe_period);
            for (int c = 0; c < 3; ++c) {
                const auto& f = field[static_cast<std::size_t>(c)];
                const double smooth = (1 - fx) * (1 - fy) * f[iy * grid + ix] +
                                      fx * (1 - fy) * f[iy * grid + ix + 1] +
                                      (1 - fx) * fy * f[(iy + 1) * grid + ix] +
                                      fx * fy * f[(iy + 1) * grid + ix + 1];
                background[static_cast<std::size_t>((y * size + x) * 3 + c)] =
                    base[static_cast<std::size_t>(c)] + smooth + stripe;
            }
        }

    // Objects: class, size, position (no overlap), rotation, colour.
    std::vector<int> labels = options.labels;
    while (static_cast<int>(labels.size()) < options.objects) {
        const int label = static_cast<int>(random.below(class_count));
        if (std::find(labels.begin(), labels.end(), label) == labels.end()) labels.push_back(label);
    }
    for (int label : labels) {
        SceneObject object;
        object.label = label;
        for (int attempt = 0;; ++attempt) {
            object.radius = size * random.uniform(options.min_radius, options.max_radius);
            object.centre_x = random.uniform(object.radius + 1, size - object.radius - 1);
            object.centre_y = random.uniform(object.radius + 1, size - object.radius - 1);
            bool clear = true;
            for (const SceneObject& other : scene.objects)
                clear = clear && std::hypot(object.centre_x - other.centre_x,
                                            object.centre_y - other.centre_y) >=
                                     object.radius + other.radius + 3;
            if (clear) break;
            if (attempt == 1000)
                throw argument_error(
                    "draw_scene: cannot place two objects apart; lower max_radius or raise size");
        }
        object.angle = random.uniform(0, 2 * std::numbers::pi);
        do {
            for (auto& c : object.colour) c = static_cast<std::uint8_t>(random.below(256));
        } while (detail::colour_distance(base, object.colour) < 110);
        scene.objects.push_back(std::move(object));
    }

    // Render with 4x4 supersampling; the mask holds pixels at least half covered.
    scene.image = io::Image(size, size, 3);
    std::vector<double> colour = background;
    for (SceneObject& object : scene.objects) {
        object.mask.assign(static_cast<std::size_t>(size * size), 0);
        object.box = Box{size, size, 0, 0};
        const double c = std::cos(object.angle), s = std::sin(object.angle);
        const int x0 = std::max(0, static_cast<int>(object.centre_x - object.radius) - 1);
        const int x1 = std::min(size, static_cast<int>(object.centre_x + object.radius) + 2);
        const int y0 = std::max(0, static_cast<int>(object.centre_y - object.radius) - 1);
        const int y1 = std::min(size, static_cast<int>(object.centre_y + object.radius) + 2);
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) {
                int covered = 0;
                for (int sy = 0; sy < 4; ++sy)
                    for (int sx = 0; sx < 4; ++sx) {
                        const double dx = (x + (sx + 0.5) / 4 - object.centre_x) / object.radius;
                        const double dy = (y + (sy + 0.5) / 4 - object.centre_y) / object.radius;
                        // Rotate into the object's frame; v points up on screen.
                        covered += detail::inside_shape(object.label, c * dx + s * dy,
                                                        -(-s * dx + c * dy));
                    }
                if (covered == 0) continue;
                const double coverage = covered / 16.0;
                for (int k = 0; k < 3; ++k) {
                    double& v = colour[static_cast<std::size_t>((y * size + x) * 3 + k)];
                    v = (1 - coverage) * v + coverage * object.colour[static_cast<std::size_t>(k)];
                }
                if (covered >= 8) {
                    object.mask[static_cast<std::size_t>(y * size + x)] = 1;
                    object.box.x0 = std::min(object.box.x0, x);
                    object.box.y0 = std::min(object.box.y0, y);
                    object.box.x1 = std::max(object.box.x1, x + 1);
                    object.box.y1 = std::max(object.box.y1, y + 1);
                }
            }
    }
    // Pixel noise: uniform, standard deviation 6.
    const double noise = 6 * std::sqrt(3.0);
    for (std::size_t i = 0; i < colour.size(); ++i)
        scene.image.pixels[i] = static_cast<std::uint8_t>(
            std::clamp(std::lround(colour[i] + random.uniform(-noise, noise)), 0L, 255L));
    return scene;
}

// Scenes seed_begin, seed_begin + 1, ..., drawn in parallel, with their normalised network
// input [count, 3, size, size].
template <class T>
struct SceneBatch {
    std::vector<Scene> scenes;
    Tensor<T> input;

    // The class of object `k` (0 or 1) of every scene: the labels for training on single
    // objects, or one target per image for explaining object k.
    std::vector<index_t> labels(std::size_t k = 0) const {
        std::vector<index_t> out;
        for (const Scene& s : scenes) {
            if (k >= s.objects.size())
                throw argument_error(gradcam::detail::concat("SceneBatch::labels: object ", k, " of a scene with ",
                                                             s.objects.size(), " objects"));
            out.push_back(s.objects[k].label);
        }
        return out;
    }
};

template <class T>
SceneBatch<T> scene_batch(std::uint64_t seed_begin, index_t count, const SceneOptions& options = {},
                          const io::Normalisation& normalisation = io::imagenet_normalisation) {
    if (count < 1) throw argument_error(gradcam::detail::concat("scene_batch: ", count, " scenes requested"));
    draw_scene(seed_begin, options);  // refuses bad options here, before any thread starts
    SceneBatch<T> batch;
    batch.scenes.resize(static_cast<std::size_t>(count));
    gradcam::detail::parallel_for(count, true, [&](index_t i, int) {
        batch.scenes[static_cast<std::size_t>(i)] = draw_scene(seed_begin + static_cast<std::uint64_t>(i), options);
    });
    std::vector<io::Image> images;
    for (const Scene& s : batch.scenes) images.push_back(s.image);
    batch.input = io::to_batch<T>(images, normalisation);
    return batch;
}

}  // namespace gradcam::shapes
