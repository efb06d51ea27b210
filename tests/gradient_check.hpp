// Finite-difference checks of the ops' backward passes: the gradient Tape::gradient returns is
// compared, in double, with central differences of the same loss, and the forward in float is
// compared with the forward in double.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "gradcam/ops/arithmetic.hpp"
#include "gradcam/ops/reduce.hpp"
#include "gradcam/random.hpp"
#include "gradcam/tape.hpp"

namespace gradcam::testing {

// The scalar type of a Var, for op-building lambdas that are generic over float and double.
template <class V>
struct ScalarOf;
template <class T>
struct ScalarOf<Var<T>> {
    using type = T;
};
template <class V>
using scalar_of = typename ScalarOf<std::remove_cvref_t<V>>::type;

inline Tensor<double> random_normal(Shape shape, Random& random) {
    Tensor<double> t(std::move(shape));
    for (double& v : t) v = random.normal();
    return t;
}

// Values with |v| in [low, high] and random signs: at least `low` away from ReLU's kink.
inline Tensor<double> away_from_zero(Shape shape, Random& random, double low = 0.1,
                                     double high = 1.5) {
    Tensor<double> t(std::move(shape));
    for (double& v : t) v = random.uniform(low, high) * (random.uniform() < 0.5 ? -1.0 : 1.0);
    return t;
}

// A random permutation of evenly spaced values, each moved by at most spacing / 10: any two
// elements differ by more than 0.8 * spacing, so no pooling window holds a near-tie, and no
// value lies within spacing / 2 of zero.
inline Tensor<double> well_spaced(Shape shape, Random& random, double spacing = 0.05) {
    Tensor<double> t(std::move(shape));
    const index_t n = t.size();
    std::vector<index_t> order(static_cast<std::size_t>(n));
    for (index_t k = 0; k < n; ++k) order[static_cast<std::size_t>(k)] = k;
    for (index_t k = n - 1; k > 0; --k)
        std::swap(order[static_cast<std::size_t>(k)],
                  order[static_cast<std::size_t>(random.below(static_cast<std::uint64_t>(k + 1)))]);
    for (index_t k = 0; k < n; ++k)
        t[k] = (static_cast<double>(order[static_cast<std::size_t>(k)]) -
                static_cast<double>(n) / 2 + 0.5) *
                   spacing +
               random.uniform(-0.1, 0.1) * spacing;
    return t;
}

inline double dot(const Tensor<double>& a, const Tensor<double>& b) {
    double s = 0;
    for (index_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

// The op's output for `inputs`, computed in T on a fresh tape where every input is a constant
// (so nothing is recorded: this is also the inference path).
template <class T, class Build>
Tensor<T> forward_value(const std::vector<Tensor<double>>& inputs, Build& build) {
    Tape<T> tape;
    std::vector<Var<T>> vars;
    for (const Tensor<double>& in : inputs) vars.push_back(tape.constant(in.template cast<T>()));
    return build(vars).value();
}

struct CheckResult {
    double gradient_error = 0;  // worst |analytic - numeric| / (1 + |numeric|)
    double forward_error = 0;   // worst |float - double| / (1 + |double|)
};

struct CheckOptions {
    double eps = 1e-6;
    double gradient_tolerance = 1e-6;
    double forward_tolerance = 1e-5;
    // For large inputs: check this many elements of each input, drawn at random (0: all).
    index_t sampled_elements = 0;
};

// Checks an op built by `build` (a generic lambda taking const std::vector<Var<T>>& and
// returning the op's output Var<T>) with respect to every input.
//
// The loss is L = sum(r1 * op(x...)) + sum(r2 * op(x...)) with random r1, r2 and the op
// recorded twice on the same variables, so every input's gradient is the sum of two backward
// calls: a backward that assigns where it should add loses one of them and fails the check.
template <class Build>
CheckResult check_gradients(const std::string& what, const std::vector<Tensor<double>>& inputs,
                            Build build, Random& random, const CheckOptions& options = {}) {
    INFO("op: " << what);
    CheckResult result;

    // Forward in float against double.
    const Tensor<double> y = forward_value<double>(inputs, build);
    const Tensor<float> y_float = forward_value<float>(inputs, build);
    REQUIRE(y_float.shape() == y.shape());
    for (index_t i = 0; i < y.size(); ++i)
        result.forward_error =
            std::max(result.forward_error,
                     std::abs(static_cast<double>(y_float[i]) - y[i]) / (1 + std::abs(y[i])));
    CHECK(result.forward_error <= options.forward_tolerance);

    // Analytic gradients.
    const Tensor<double> r1 = random_normal(y.shape(), random),
                         r2 = random_normal(y.shape(), random);
    Tape<double> tape;
    std::vector<Var<double>> vars;
    for (const Tensor<double>& in : inputs) vars.push_back(tape.variable(in));
    const Var<double> y1 = build(vars), y2 = build(vars);
    REQUIRE(y1.shape() == y.shape());
    const Var<double> loss = add(sum(mul(tape.constant(r1), y1)), sum(mul(tape.constant(r2), y2)));
    const std::vector<Tensor<double>> grads = tape.gradient(loss, vars);
    REQUIRE(grads.size() == inputs.size());

    Tensor<double> r = r1;
    for (index_t i = 0; i < r.size(); ++i) r[i] += r2[i];
    CHECK(std::abs(loss.value()[0] - dot(r, y)) <= 1e-10 * (1 + std::abs(dot(r, y))));

    // The same tape again, asking for one input at a time: the ops skip the gradients nobody
    // asked for (sink.wants), which must not change the ones that were asked for.
    for (std::size_t k = 0; k < inputs.size(); ++k) {
        INFO("input " << k << " requested alone");
        REQUIRE(grads[k].shape() == inputs[k].shape());
        const Tensor<double> alone = tape.gradient(loss, {vars[k]})[0];
        CHECK(max_abs_difference(alone, grads[k]) <= 1e-12 * (1 + max_abs(grads[k])));
    }

    // Central differences, each loss evaluated by a fresh forward on perturbed inputs.
    std::vector<Tensor<double>> perturbed = inputs;
    auto loss_at = [&] { return dot(r, forward_value<double>(perturbed, build)); };
    for (std::size_t k = 0; k < inputs.size(); ++k) {
        double worst = 0, worst_analytic = 0, worst_numeric = 0;
        index_t worst_at = -1;
        std::vector<index_t> elements;
        const index_t size = inputs[k].size();
        if (options.sampled_elements > 0 && options.sampled_elements < size)
            for (index_t n = 0; n < options.sampled_elements; ++n)
                elements.push_back(std::min<index_t>(size - 1, static_cast<index_t>(random.uniform(0, 1) * size)));
        else
            for (index_t i = 0; i < size; ++i) elements.push_back(i);
        for (const index_t i : elements) {
            const double saved = perturbed[k][i];
            perturbed[k][i] = saved + options.eps;
            const double up = loss_at();
            perturbed[k][i] = saved - options.eps;
            const double down = loss_at();
            perturbed[k][i] = saved;
            const double numeric = (up - down) / (2 * options.eps);
            const double error = std::abs(grads[k][i] - numeric) / (1 + std::abs(numeric));
            if (error > worst || worst_at < 0) {
                worst = error;
                worst_at = i;
                worst_analytic = grads[k][i];
                worst_numeric = numeric;
            }
        }
        INFO("input " << k << " of shape " << inputs[k].shape() << ": worst element " << worst_at
                      << ", analytic " << worst_analytic << ", numeric " << worst_numeric);
        CHECK(worst <= options.gradient_tolerance);
        result.gradient_error = std::max(result.gradient_error, worst);
    }

    if (std::getenv("GRADCAM_GRADIENT_REPORT"))
        std::printf("%-48s gradient %.2e   float forward %.2e\n", what.c_str(),
                    result.gradient_error, result.forward_error);
    return result;
}

}  // namespace gradcam::testing
