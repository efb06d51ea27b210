// A seeded random source whose numbers are the same on every platform (the standard
// distributions are not), so seeded weights and scenes are reproducible everywhere.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>

namespace gradcam {

class Random {
  public:
    explicit Random(std::uint64_t seed) : engine_(seed) {}

    // Uniform on [0, 1), 53 random bits.
    double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
    double uniform(double low, double high) { return low + (high - low) * uniform(); }

    // Uniform integer in [0, n).
    std::uint64_t below(std::uint64_t n) {
        return static_cast<std::uint64_t>(uniform() * static_cast<double>(n));
    }

    // Standard normal, by the Box-Muller transform.
    double normal() {
        const double u = 1.0 - uniform();  // in (0, 1], so the log is finite
        const double v = uniform();
        return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * std::numbers::pi * v);
    }
    double normal(double mean, double stddev) { return mean + stddev * normal(); }

    std::uint64_t next() { return engine_(); }

  private:
    std::mt19937_64 engine_;
};

}  // namespace gradcam
