// Module: a piece of a network that owns parameters, contains named sub-modules and is
// called on a Var. Each module knows its dotted path from the root ("layer4.1.conv2"); its
// output takes that name on the tape, so any module can be chosen as a target layer, and its
// tensors are addressed by PyTorch state_dict keys ("layer4.1.conv2.weight").
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gradcam/random.hpp"
#include "gradcam/tape.hpp"

namespace gradcam::nn {

template <class T>
class Module {
  public:
    Module() = default;
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;
    virtual ~Module() = default;

    // Runs the module and names its output after the module's path. An error from inside is
    // prefixed with the innermost module's path, so it says which layer refused.
    Var<T> operator()(const Var<T>& x) {
        Var<T> y = in_context([&] { return forward(x); });
        if (!path_.empty()) y.tape().name(y, path_);
        return y;
    }

    // Runs `work` for this module (as a fused op does for the modules it stands for): an error
    // from inside is prefixed with the module's path, unless an inner module's already is.
    template <class Work>
    auto in_context(Work&& work) const -> decltype(work()) {
        try {
            return work();
        } catch (const shape_error& e) {
            rethrow_in_context(e);
        } catch (const argument_error& e) {
            rethrow_in_context(e);
        } catch (const unsupported_error& e) {
            rethrow_in_context(e);
        }
    }

    // The dotted path from the root module; empty for the root.
    const std::string& path() const { return path_; }

    // Parameters and buffers by state_dict key relative to this module, in PyTorch's order: a
    // module's parameters, then its buffers, then its children's, depth first.
    std::vector<std::pair<std::string, Tensor<T>*>> state() { return collect(true, true); }
    std::vector<std::pair<std::string, Tensor<T>*>> parameters() { return collect(true, false); }
    std::vector<std::pair<std::string, Tensor<T>*>> buffers() { return collect(false, true); }

    // This module and every descendant, with its path, depth first (named_modules()).
    std::vector<Module*> modules() {
        std::vector<Module*> out{this};
        for (auto& [name, child] : children_) {
            auto sub = child->modules();
            out.insert(out.end(), sub.begin(), sub.end());
        }
        return out;
    }

    // The tensor with state_dict key `key`, relative to this module.
    Tensor<T>& tensor(std::string_view key) {
        for (auto& [name, t] : state())
            if (name == key) return *t;
        std::string known;
        for (auto& [name, t] : state()) known += (known.empty() ? "" : ", ") + name;
        throw lookup_error(detail::concat("no parameter or buffer '", key, "' in ",
                                          path_.empty() ? "the network" : "module '" + path_ + "'",
                                          "; known keys: ", known));
    }

    // The descendant at `path` (relative to this module).
    Module& module(std::string_view path) {
        const std::string full = relative_to_root(path);
        for (Module* m : modules())
            if (m->path_ == full) return *m;
        std::string known;
        for (Module* m : modules())
            if (!m->path_.empty()) known += (known.empty() ? "" : ", ") + m->path_;
        throw lookup_error(detail::concat("no module named '", path, "'; known modules: ", known));
    }

    // Fills parameters as PyTorch's default initialisation does (same distributions, not the
    // same numbers), from a seed. Children go first, so a network can override its layers'
    // defaults (as torchvision's ResNet does for its convolutions).
    void initialise(std::uint64_t seed) {
        Random random(seed);
        std::vector<Module*> all = modules();
        for (auto it = all.rbegin(); it != all.rend(); ++it) (*it)->reset_parameters(random);
    }

    // Training mode (batch statistics in batch norm, dropout) for this module and all below it.
    void set_training(bool on) {
        for (Module* m : modules()) m->training_ = on;
    }
    // Training mode for this module only.
    void set_training_alone(bool on) { training_ = on; }
    bool training() const { return training_; }

  protected:
    virtual Var<T> forward(const Var<T>& x) = 0;
    virtual void reset_parameters(Random&) {}

    // Registers a child module named `name` (its path becomes this path + "." + name).
    template <class M, class... Args>
    M& submodule(std::string name, Args&&... args) {
        auto child = std::make_shared<M>(std::forward<Args>(args)...);
        M& ref = *child;
        add_module(std::move(name), std::move(child));
        return ref;
    }
    void add_module(std::string name, std::shared_ptr<Module> child) {
        child->set_path(path_.empty() ? name : path_ + "." + name);
        children_.emplace_back(std::move(name), std::move(child));
    }

    Tensor<T>& add_parameter(std::string name, Tensor<T> value) {
        return add_tensor(std::move(name), std::move(value), true);
    }
    Tensor<T>& add_buffer(std::string name, Tensor<T> value) {
        return add_tensor(std::move(name), std::move(value), false);
    }

    // A parameter as an operand on x's tape.
    static Var<T> use(const Var<T>& x, const Tensor<T>& parameter) {
        return x.tape().parameter(parameter);
    }

    std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() { return children_; }

  private:
    template <class Error>
    [[noreturn]] void rethrow_in_context(const Error& e) const {
        const std::string_view what = e.what();
        if (path_.empty() || what.starts_with("layer '")) throw e;
        throw Error(detail::concat("layer '", path_, "': ", what));
    }

    struct Entry {
        std::string name;
        std::unique_ptr<Tensor<T>> value;  // a stable address: tapes refer to it
        bool is_parameter;
    };

    Tensor<T>& add_tensor(std::string name, Tensor<T> value, bool is_parameter) {
        tensors_.push_back(
            {std::move(name), std::make_unique<Tensor<T>>(std::move(value)), is_parameter});
        return *tensors_.back().value;
    }

    void set_path(std::string path) {
        path_ = std::move(path);
        for (auto& [name, child] : children_) child->set_path(path_ + "." + name);
    }

    std::string relative_to_root(std::string_view key) const {
        return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
    }

    std::vector<std::pair<std::string, Tensor<T>*>> collect(bool parameters, bool buffers) {
        std::vector<std::pair<std::string, Tensor<T>*>> out;
        for (bool want_parameters : {true, false}) {
            if (want_parameters ? !parameters : !buffers) continue;
            for (auto& e : tensors_)
                if (e.is_parameter == want_parameters) out.emplace_back(e.name, e.value.get());
        }
        for (auto& [name, child] : children_)
            for (auto& [key, t] : child->collect(parameters, buffers))
                out.emplace_back(name + "." + key, t);
        return out;
    }

    std::string path_;
    std::vector<Entry> tensors_;
    std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
    bool training_ = false;
};

// Sets a network's training mode for a scope, then gives every module back the mode it had
// (so a network with frozen batch norms keeps them frozen).
template <class T>
class TrainingMode {
  public:
    TrainingMode(Module<T>& net, bool on) {
        for (Module<T>* m : net.modules()) saved_.emplace_back(m, m->training());
        net.set_training(on);
    }
    ~TrainingMode() {
        for (auto& [module, was] : saved_) module->set_training_alone(was);
    }
    TrainingMode(const TrainingMode&) = delete;
    TrainingMode& operator=(const TrainingMode&) = delete;

  private:
    std::vector<std::pair<Module<T>*, bool>> saved_;
};

}  // namespace gradcam::nn
