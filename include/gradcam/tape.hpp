// The reverse-mode tape (define-by-run, like PyTorch autograd). Ops append a node holding
// their output, their inputs and a closure computing the vector-Jacobian product; nodes are
// appended in execution order, so the tape is already topologically sorted.
//
// gradient() sweeps, in reverse, only the nodes that lie on a path from a requested variable
// to the root, and leaves the tape unchanged: one recorded forward serves many backward
// passes. The ReLU rule (standard, guided, deconvnet) is an argument of the backward pass,
// so one recorded graph yields both Grad-CAM and guided backpropagation.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gradcam/tensor.hpp"

namespace gradcam {

// How a ReLU passes gradients back (Springenberg et al. 2015, Fig. 1).
enum class ReluRule {
    standard,   // dx = dy * [x > 0]
    guided,     // dx = dy * [x > 0] * [dy > 0]      (guided backpropagation)
    deconvnet,  // dx = dy * [dy > 0]                (Zeiler & Fergus 2014)
};

struct GradientOptions {
    ReluRule relu = ReluRule::standard;
};

template <class T>
class Tape;
template <class T>
class Node;
template <class T>
class GradientSink;
template <class T>
class Var;

// An op's backward: given the gradient of the loss with respect to the node's output, add the
// gradient with respect to each input that `sink.wants(i)` into `sink.of(i)`.
template <class T>
using Backward =
    std::function<void(const Node<T>& self, const Tensor<T>& grad_output, GradientSink<T>& sink)>;

// How an op's backward moves the gradient from its output to its one input, as far as
// Tape::gradient_channel_sums needs to know.
enum class GradientRouting {
    opaque,           // anything else
    within_channels,  // each output channel's gradient goes to the same input channel with its
                      // total unchanged (max pooling; average pooling whose bins weigh 1 in all)
    same_order,       // each image's values in the same order (reshape, flatten)
};

// For a linear layer: the sums of its input gradient over `blocks` equal runs of each row (the
// channels of a flattened feature map), from its output gradient dy without forming the input
// gradient; an empty tensor when the op cannot.
template <class T>
using BlockSums =
    std::function<Tensor<T>(const Node<T>& self, const Tensor<T>& grad_output, index_t blocks)>;

// Which values an op's backward reads (shapes can always be read). The tape keeps those for the
// backward; a value no backward reads is freed with the last Var that refers to it, as in
// inference, so that a recorded forward reuses memory still in cache and holds no more than the
// backward needs. By default everything is read.
struct BackwardReads {
    bool output = true;
    std::vector<bool> inputs;  // by input; empty: all of them
    bool input(std::size_t i) const { return inputs.empty() || (i < inputs.size() && inputs[i]); }
};

template <class T>
class Node {
  public:
    // Throws logic_error for a value freed because no backward reads it (see BackwardReads).
    const Tensor<T>& value() const {
        if (external_) return *external_;
        if (held_) return *held_;
        // Not the last owner when it succeeds: the Vars that keep the value alive remain.
        const std::shared_ptr<Tensor<T>> shared = value_.lock();
        if (!shared)
            throw std::logic_error(detail::concat("the value of ", label(),
                                                  " was freed: its op recorded that no backward "
                                                  "reads it (BackwardReads)"));
        return *shared;
    }
    // The value's shape, also once the value is freed.
    const Shape& shape() const { return external_ ? external_->shape() : shape_; }
    const std::string& op() const { return op_; }
    const std::vector<std::string>& names() const { return names_; }
    std::size_t input_count() const { return inputs_.size(); }
    const Node& input(std::size_t i) const { return *inputs_[i]; }
    // Gradients can reach this node: it is a variable, a trained parameter, or was recorded
    // from such a node.
    bool differentiable() const { return position_ >= 0; }
    // The tape this node was recorded on; argument_error once that tape has been destroyed.
    Tape<T>& tape() const {
        if (tape_alive_.expired())
            throw argument_error(detail::concat("the tape of ", label(),
                                                " no longer exists: a Var must not "
                                                "outlive the Tape it was computed on"));
        return *tape_;
    }

    // A readable label for messages: the op and the node's latest name.
    std::string label() const {
        return names_.empty() ? op_ : detail::concat(op_, " '", names_.back(), "'");
    }

  private:
    friend class Tape<T>;
    friend class GradientSink<T>;
    friend class Var<T>;

    // The value is shared with the Vars that refer to the node; the node holds it too (held_)
    // unless no backward reads it.
    std::weak_ptr<Tensor<T>> value_;
    std::shared_ptr<Tensor<T>> held_;
    Shape shape_;
    const Tensor<T>* external_ = nullptr;  // a parameter or constant referred to without a copy
    std::string op_;
    GradientRouting routing_ = GradientRouting::opaque;
    BlockSums<T> block_sums_;
    std::vector<std::string> names_;
    std::vector<std::shared_ptr<Node>> inputs_;
    Backward<T> backward_;
    Tape<T>* tape_ = nullptr;
    std::weak_ptr<const bool> tape_alive_;  // expires with the tape
    index_t position_ = -1;                 // index on the tape; -1 when not recorded
};

// A handle to a value computed on a tape. Cheap to copy; it keeps its value alive.
template <class T>
class Var {
  public:
    using value_type = T;

    Var() = default;

    const Tensor<T>& value() const { return node().value(); }
    const Shape& shape() const { return node().shape(); }
    const Node<T>& node() const {
        if (!node_) throw argument_error("use of an empty gradcam::Var");
        return *node_;
    }
    Tape<T>& tape() const { return node().tape(); }
    bool differentiable() const { return node().differentiable(); }
    explicit operator bool() const { return node_ != nullptr; }

    friend bool operator==(const Var& a, const Var& b) { return a.node_ == b.node_; }

  private:
    friend class Tape<T>;
    explicit Var(std::shared_ptr<Node<T>> node)
        : node_(std::move(node)), value_(node_ ? node_->value_.lock() : nullptr) {}
    std::shared_ptr<Node<T>> node_;
    std::shared_ptr<Tensor<T>> value_;  // null for a parameter or constant referred to
};

// What an op's backward closure writes into.
template <class T>
class GradientSink {
  public:
    // Does input `i` lie on a path to a requested variable? If not, skip its gradient.
    bool wants(std::size_t i) const {
        const Node<T>& in = *node_->inputs_[i];
        return in.position_ >= lowest_ && (*needed_)[index(in)];
    }

    // The accumulator for input `i`'s gradient, zero on first use. Always add to it: an
    // input used by several ops receives the sum of their contributions.
    Tensor<T>& of(std::size_t i) {
        if (!wants(i))
            throw argument_error(
                detail::concat("backward of ", node_->label(), ": gradient of input ", i,
                               " requested, but it is not wanted; ask wants(i) first"));
        const Node<T>& in = *node_->inputs_[i];
        auto& slot = (*grads_)[index(in)];
        if (!slot) slot = std::make_unique<Tensor<T>>(in.shape());
        return *slot;
    }

    // As of(i), for a backward that writes every element of input i's gradient: when nothing
    // has been added to it yet, the tensor comes uninitialised and `fresh` is set, and the
    // backward assigns (sparing a pass that zeroes it); otherwise it adds.
    Tensor<T>& of(std::size_t i, bool& fresh) {
        fresh = false;
        if (wants(i)) {
            const Node<T>& in = *node_->inputs_[i];
            auto& slot = (*grads_)[index(in)];
            if (!slot) {
                slot = std::make_unique<Tensor<T>>(Tensor<T>::uninitialized(in.shape()));
                fresh = true;
            }
        }
        return of(i);  // throws when input i is not wanted
    }

    // Hands this node's own gradient dy to input i as its whole gradient, without a copy,
    // when nothing has reached input i yet and dy is not a requested result: for an op whose
    // input gradient is dy itself (one side of a sum). False when it cannot; the op then adds
    // dy as usual. dy stays readable until the backward returns.
    bool pass_through(std::size_t i) {
        if (!wants(i)) return false;
        auto& own = (*grads_)[index(*node_)];
        auto& slot = (*grads_)[index(*node_->inputs_[i])];
        if ((*is_wrt_)[index(*node_)] || slot || !own || own->shape() != node_->inputs_[i]->shape())
            return false;
        slot = std::move(own);
        return true;
    }

    // This node's own gradient dy, given to the backward as scratch of its shape when it is not
    // a requested result and no input took it (pass_through); else null. For a backward that
    // computes a temporary element by element from dy: it may overwrite dy in place.
    std::unique_ptr<Tensor<T>> take_own() {
        auto& own = (*grads_)[index(*node_)];
        if ((*is_wrt_)[index(*node_)] || !own) return nullptr;
        return std::move(own);
    }

    // As of(i, fresh), for a backward where each dx element depends on the same element of dy
    // alone: when dy can be handed down (pass_through), this is dy's own tensor, `fresh` is
    // set, and the backward overwrites it in place, element by element.
    Tensor<T>& of_elementwise(std::size_t i, bool& fresh) {
        if (!pass_through(i)) return of(i, fresh);
        fresh = true;
        return of(i);
    }

    const GradientOptions& options() const { return *options_; }

  private:
    friend class Tape<T>;
    std::size_t index(const Node<T>& n) const {
        return static_cast<std::size_t>(n.position_ - lowest_);
    }

    const Node<T>* node_ = nullptr;
    std::vector<std::unique_ptr<Tensor<T>>>* grads_ = nullptr;
    const std::vector<char>* needed_ = nullptr;
    const std::vector<char>* is_wrt_ = nullptr;
    const GradientOptions* options_ = nullptr;
    index_t lowest_ = 0;
};

template <class T>
class Tape {
  public:
    Tape() = default;
    Tape(const Tape&) = delete;
    Tape& operator=(const Tape&) = delete;

    // A value gradients never flow to (an input that is not being explained).
    Var<T> constant(Tensor<T> value) { return Var<T>(make_node("constant", std::move(value))); }

    // The same, referred to without a copy: the tensor must outlive the tape (an explanation's
    // input, which its caller holds while the explanation runs).
    Var<T> constant_reference(const Tensor<T>& value) {
        auto node = make_node("constant", Tensor<T>());
        node->external_ = &value;
        return Var<T>(std::move(node));
    }
    Var<T> constant_reference(Tensor<T>&&) = delete;

    // A leaf whose gradient can be asked for (an input image for saliency maps).
    Var<T> variable(Tensor<T> value) {
        auto node = make_node("variable", std::move(value));
        append(node);
        return Var<T>(std::move(node));
    }

    // A module's parameter, referred to without a copy: the tensor must outlive the tape. It
    // is differentiable only while parameter gradients are switched on (training).
    Var<T> parameter(const Tensor<T>& value) {
        auto node = make_node("parameter", Tensor<T>());
        node->external_ = &value;
        if (parameters_differentiable_) append(node);
        return Var<T>(std::move(node));
    }

    Var<T> parameter(Tensor<T>&&) = delete;  // the tape refers to the tensor: it must outlive it

    void set_parameters_differentiable(bool on) { parameters_differentiable_ = on; }
    bool parameters_differentiable() const { return parameters_differentiable_; }

    // Keep no backward state until the value named `layer` is produced; that value then
    // becomes a variable. Everything before it runs as in inference and is freed as soon as
    // the forward moves on, which is all a layer's Grad-CAM needs.
    void record_from(std::string layer) {
        record_from_ = std::move(layer);
        recording_ = false;
    }
    bool recording() const { return recording_; }

    // Append an op's result. When no input is differentiable, or recording is off, the node
    // keeps neither its inputs nor its closure. The values `reads` names stay with the tape.
    Var<T> record(std::string op, Tensor<T> value, const std::vector<Var<T>>& inputs,
                  Backward<T> backward, const BackwardReads& reads = {}) {
        auto node = make_node(std::move(op), std::move(value));
        if (recording_ && std::any_of(inputs.begin(), inputs.end(), [&](const Var<T>& in) {
                return in.node_ && in.node().differentiable();
            })) {
            for (std::size_t i = 0; i < inputs.size(); ++i) {
                const Var<T>& in = inputs[i];
                if (!in.node_) continue;
                check_same_tape(in, node->op_.c_str());
                node->inputs_.push_back(in.node_);
                if (reads.input(i)) hold(in);
            }
            node->backward_ = std::move(backward);
            append(node);
            if (!reads.output) {
                Var<T> result(node);
                node->held_.reset();  // the Vars alone keep it, until it is kept by name
                return result;
            }
        }
        return Var<T>(std::move(node));
    }

    // Would an op with these inputs record a backward? Ops ask before keeping extra state.
    bool will_record(const std::vector<Var<T>>& inputs) const {
        return recording_ && std::any_of(inputs.begin(), inputs.end(), [](const Var<T>& in) {
                   return in.node_ && in.node().differentiable();
               });
    }

    // Keep the value that will be named `name` for find(), even if nothing records it (as a
    // forward hook would), and not fused away (may_fuse). Values a recorded backward reads are
    // kept anyway; others are released as soon as the forward moves past them.
    void keep(std::string name) { keep_.push_back(std::move(name)); }

    // May one op compute from `input` the values that would be named `names` without handing
    // them out (nn::conv_batch_norm fuses a convolution, its batch norm and ReLU so)? Yes when
    // none of them is kept or is the record_from layer, and either the op will not record
    // (`input` is a constant, or recording has not started) or fusion while recording is on.
    template <class... Names>
    bool may_fuse(const Var<T>& input, const Names&... names) const {
        if (will_record({input}) && !fusion_while_recording_) return false;
        const auto free = [&](std::string_view name) {
            return name != record_from_ && std::find(keep_.begin(), keep_.end(), name) == keep_.end();
        };
        return (free(names) && ...);
    }
    // Fusion where the forward records. Off by default: a recorded value can otherwise be found
    // and differentiated after the forward. The explanations switch it on for module networks,
    // which they query only through keep() and record_from().
    void set_fusion_while_recording(bool on) { fusion_while_recording_ = on; }
    bool fusion_while_recording() const { return fusion_while_recording_; }

    // What a recorded op tells gradient_channel_sums; ignored when v's op did not record.
    void set_routing(const Var<T>& v, GradientRouting routing) {
        if (recorded_op(v, "set_routing")) v.node_->routing_ = routing;
    }
    void set_block_sums(const Var<T>& v, BlockSums<T> block_sums) {
        if (recorded_op(v, "set_block_sums")) v.node_->block_sums_ = std::move(block_sums);
    }

    // The backward will ask for the gradient at `layer` only by its sums over each channel
    // (Grad-CAM's weights): a linear layer that reads the layer's values, pooled and flattened,
    // then makes its weight's sums over each channel's run of features, or finds them kept
    // with the weight (expected_channel_blocks).
    void expect_channel_sums(std::string layer) { channel_sums_layer_ = std::move(layer); }

    // The channel count K of the layer given to expect_channel_sums, when x holds that layer's
    // values moved by routing ops alone, so that each image's row of x is K runs of equal
    // length, one per channel; otherwise 0.
    index_t expected_channel_blocks(const Var<T>& x) const {
        if (channel_sums_layer_.empty() || !x.node_) return 0;
        std::vector<const Node<T>*> path;
        for (const Node<T>* n = x.node_.get();; n = n->inputs_[0].get()) {
            const auto& names = n->names_;
            if (std::find(names.begin(), names.end(), channel_sums_layer_) != names.end()) {
                if (n->shape().rank() != 4) return 0;
                index_t blocks = n->shape()[1];
                for (auto it = path.rbegin(); it != path.rend(); ++it)
                    blocks = blocks_after(**it, blocks);
                return blocks;
            }
            if (n->routing_ == GradientRouting::opaque || n->inputs_.size() != 1) return 0;
            path.push_back(n);
        }
    }

    // Notes that the value named `name` was computed inside a fused op (may_fuse said it could
    // be): find() then explains why it has no value.
    void name_fused(const std::string& name) {
        if (!named_.contains(name)) name_order_.push_back(name);
        Named& entry = named_[name];
        entry = Named{};
        entry.fused = true;
    }

    // Give `v` a name (a module path such as "layer4.1.conv2") by which it can be found.
    // A node may carry several names (a Sequential and its last child share an output); when
    // a name is given twice, find() returns the latest value, as a forward hook would.
    void name(const Var<T>& v, const std::string& name) {
        check_same_tape(v, "name");
        Node<T>& node = *v.node_;
        node.names_.push_back(name);
        if (!named_.contains(name)) name_order_.push_back(name);
        if (!recording_ && name == record_from_) {
            recording_ = true;
            node.inputs_.clear();
            node.backward_ = nullptr;
            append(v.node_);
        }
        Named& entry = named_[name];
        entry.weak = v.node_;
        entry.before_start = !recording_;
        entry.fused = false;
        entry.kept = std::find(keep_.begin(), keep_.end(), name) != keep_.end() ? v.node_ : nullptr;
        if (entry.kept) hold(v);
    }

    // The value named `name`. Throws lookup_error listing the known names if there is none.
    Var<T> find(std::string_view name) const {
        auto it = named_.find(std::string(name));
        if (it == named_.end())
            throw lookup_error(detail::concat("no layer named '", name,
                                              "' was computed; known names: ", known_names()));
        auto node = it->second.weak.lock();
        if (it->second.fused)
            throw lookup_error(detail::concat(
                "layer '", name, "' was computed inside a fused op and not kept; call keep(\"",
                name, "\") before the forward to have it"));
        if (!node && it->second.before_start)
            throw lookup_error(detail::concat(
                "layer '", name, "' was computed but has been released: it lies before the ",
                "recording start '", record_from_, "'"));
        if (!node || (!node->held_ && node->value_.expired()))
            throw lookup_error(
                detail::concat("layer '", name, "' was computed but not kept: nothing on the tape ",
                               "needs it; call keep(\"", name, "\") before the forward, or make ",
                               "the input a variable"));
        return Var<T>(std::move(node));
    }

    bool contains(std::string_view name) const { return named_.contains(std::string(name)); }

    // Every name given on this tape, in order of first appearance.
    const std::vector<std::string>& names() const { return name_order_; }

    // Number of nodes gradients can reach: variables, trained parameters and recorded ops.
    std::size_t size() const { return nodes_.size(); }

    // d root / d wrt[i] for a scalar root.
    std::vector<Tensor<T>> gradient(const Var<T>& root, const std::vector<Var<T>>& wrt,
                                    const GradientOptions& options = {}) const {
        if (root.shape().numel() != 1)
            throw shape_error(detail::concat(
                "gradient: the root ", root.node().label(), " has shape ", root.shape(),
                "; reduce it to a scalar (sum, select) or pass a seed of that shape"));
        return gradient(root, Tensor<T>(root.shape(), T(1)), wrt, options);
    }

    // The vector-Jacobian product seed^T * d root / d wrt[i], for each i (zeros for a variable
    // the root does not depend on).
    std::vector<Tensor<T>> gradient(const Var<T>& root, const Tensor<T>& seed,
                                    const std::vector<Var<T>>& wrt,
                                    const GradientOptions& options = {}) const {
        std::vector<std::unique_ptr<Tensor<T>>> reached = sweep(root, seed, wrt, options);
        std::vector<Tensor<T>> result;
        for (std::size_t i = 0; i < wrt.size(); ++i)
            result.push_back(reached[i] ? std::move(*reached[i]) : Tensor<T>(wrt[i].shape()));
        return result;
    }

    // For training: the gradient of `loss` for every parameter recorded on this tape that the
    // loss depends on, keyed by the module tensor it refers to (a parameter used twice gets the
    // sum). Parameters the loss does not reach are left out, so optimizers skip them.
    std::unordered_map<const Tensor<T>*, Tensor<T>> parameter_gradients(const Var<T>& loss) const {
        if (loss.shape().numel() != 1)
            throw shape_error(detail::concat("parameter_gradients: the loss has shape ",
                                             loss.shape(), "; it must be a scalar"));
        std::vector<Var<T>> params;
        for (const auto& n : nodes_)
            if (n->external_ && n->op_ == "parameter") params.push_back(Var<T>(n));
        std::vector<std::unique_ptr<Tensor<T>>> grads =
            sweep(loss, Tensor<T>(loss.shape(), T(1)), params, {});
        std::unordered_map<const Tensor<T>*, Tensor<T>> by_tensor;
        for (std::size_t i = 0; i < params.size(); ++i) {
            if (!grads[i]) continue;
            const Tensor<T>* key = params[i].node_->external_;
            auto [it, fresh] = by_tensor.try_emplace(key, std::move(*grads[i]));
            if (!fresh)
                for (index_t j = 0; j < it->second.size(); ++j) it->second[j] += (*grads[i])[j];
        }
        return by_tensor;
    }

    // The sums over each channel's positions of d root / d layer: [N, K] for a layer of shape
    // [N, K, h, w], as Grad-CAM's weights need them. By channel_sums_by_blocks where it applies,
    // otherwise from the whole gradient.
    Tensor<T> gradient_channel_sums(const Var<T>& root, const Var<T>& layer,
                                    const GradientOptions& options = {}) const {
        detail::expect_rank(layer.shape(), 4, "gradient_channel_sums layer", "N, K, h, w");
        if (std::optional<Tensor<T>> sums = channel_sums_by_blocks(root, layer, options))
            return std::move(*sums);
        const Tensor<T> gradient = this->gradient(root, {layer}, options)[0];
        const index_t maps = layer.shape()[0] * layer.shape()[1];
        const index_t plane = layer.shape()[2] * layer.shape()[3];
        Tensor<T> sums = Tensor<T>::uninitialized(Shape{layer.shape()[0], layer.shape()[1]});
        for (index_t m = 0; m < maps; ++m) {
            const T* g = gradient.data() + m * plane;
            sums[m] = std::accumulate(g, g + plane, T(0));
        }
        return sums;
    }

    // The same without the gradient at `layer`, when every path from it to the root runs
    // through routing ops (pooling, flattening) into a linear layer that has its block sums:
    // the sweep then stops at that layer's output. VGG's head is such a path, where this reads
    // 8 MB of block sums instead of the rows of the first classifier layer's 400 MB of weights
    // that a gradient goes through. nullopt where the graph does not allow it.
    std::optional<Tensor<T>> channel_sums_by_blocks(const Var<T>& root, const Var<T>& layer,
                                                    const GradientOptions& options = {}) const {
        check_same_tape(root, "gradient_channel_sums");
        check_same_tape(layer, "gradient_channel_sums");
        if (layer.shape().rank() != 4 || !layer.differentiable() || !root.differentiable())
            return std::nullopt;
        const index_t top = root.node().position_;
        index_t blocks = layer.shape()[1];
        for (const Node<T>* n = &layer.node();;) {
            // The one op that reads n, among those the root can depend on.
            const Node<T>* reader = nullptr;
            int reads = 0;
            for (index_t p = n->position_ + 1; p <= top; ++p)
                for (const auto& in : nodes_[static_cast<std::size_t>(p)]->inputs_)
                    if (in.get() == n) {
                        reader = nodes_[static_cast<std::size_t>(p)].get();
                        ++reads;
                    }
            if (reads != 1) return std::nullopt;
            if (reader->block_sums_ && reader->inputs_[0].get() == n) {
                const auto at = nodes_[static_cast<std::size_t>(reader->position_)];
                const Tensor<T> dy = gradient(root, {Var<T>(at)}, options)[0];
                Tensor<T> sums = reader->block_sums_(*reader, dy, blocks);
                if (sums.size() == 0) return std::nullopt;
                return sums;
            }
            if (reader->inputs_.size() != 1 || !(blocks = blocks_after(*reader, blocks)))
                return std::nullopt;
            n = reader;
        }
    }

  private:
    // The reverse sweep behind gradient(): one result per wrt, null where the root does not
    // depend on it.
    std::vector<std::unique_ptr<Tensor<T>>> sweep(const Var<T>& root, const Tensor<T>& seed,
                                                  const std::vector<Var<T>>& wrt,
                                                  const GradientOptions& options) const {
        check_same_tape(root, "gradient");
        if (seed.shape() != root.shape())
            throw shape_error(detail::concat("gradient: seed has shape ", seed.shape(),
                                             " but the root has shape ", root.shape()));
        for (std::size_t i = 0; i < wrt.size(); ++i) {
            check_same_tape(wrt[i], "gradient");
            if (!wrt[i].differentiable())
                throw argument_error(detail::concat(
                    "gradient: wrt[", i, "] (", wrt[i].node().label(),
                    ") is not differentiable: make it with Tape::variable, or start recording "
                    "at or before it"));
        }
        std::vector<std::unique_ptr<Tensor<T>>> result(wrt.size());
        if (wrt.empty() || !root.differentiable()) return result;

        // A variable made after the root cannot influence it: it keeps a zero gradient.
        const index_t top = root.node().position_;
        index_t lowest = top;
        for (const Var<T>& w : wrt)
            if (w.node().position_ <= top) lowest = std::min(lowest, w.node().position_);
        const std::size_t span = static_cast<std::size_t>(top - lowest + 1);
        auto slot = [&](const Node<T>& n) {
            return static_cast<std::size_t>(n.position_ - lowest);
        };
        auto in_span = [&](const Node<T>& n) {
            return n.position_ >= lowest && n.position_ <= top;
        };

        // A node is needed when it depends on a requested variable and the root depends on it.
        std::vector<char> is_wrt(span, 0), depends(span, 0), needed(span, 0);
        for (const Var<T>& w : wrt)
            if (in_span(w.node())) is_wrt[slot(w.node())] = depends[slot(w.node())] = 1;
        for (index_t p = lowest; p <= top; ++p) {
            const Node<T>& n = *nodes_[static_cast<std::size_t>(p)];
            for (const auto& in : n.inputs_)
                if (in->position_ >= lowest && depends[slot(*in)]) depends[slot(n)] = 1;
        }
        needed[span - 1] = depends[span - 1];
        for (index_t p = top; p >= lowest; --p) {
            const Node<T>& n = *nodes_[static_cast<std::size_t>(p)];
            if (!needed[slot(n)]) continue;
            for (const auto& in : n.inputs_)
                if (in->position_ >= lowest && depends[slot(*in)]) needed[slot(*in)] = 1;
        }

        std::vector<std::unique_ptr<Tensor<T>>> grads(span);
        grads[span - 1] = std::make_unique<Tensor<T>>(seed);
        GradientSink<T> sink;
        sink.grads_ = &grads;
        sink.needed_ = &needed;
        sink.is_wrt_ = &is_wrt;
        sink.options_ = &options;
        sink.lowest_ = lowest;
        for (index_t p = top; p >= lowest; --p) {
            const Node<T>& n = *nodes_[static_cast<std::size_t>(p)];
            const std::size_t s = slot(n);
            if (!needed[s] || !grads[s] || !n.backward_) continue;
            sink.node_ = &n;
            n.backward_(n, *grads[s], sink);
            if (!is_wrt[s]) grads[s].reset();  // consumed: free it as the sweep goes down
        }

        for (std::size_t i = 0; i < wrt.size(); ++i) {
            if (!in_span(wrt[i].node()) || !grads[slot(wrt[i].node())]) continue;
            result[i] = std::make_unique<Tensor<T>>(*grads[slot(wrt[i].node())]);
        }
        return result;
    }

    std::shared_ptr<Node<T>> make_node(std::string op, Tensor<T> value) {
        auto node = std::make_shared<Node<T>>();
        node->op_ = std::move(op);
        node->shape_ = value.shape();
        node->held_ = std::make_shared<Tensor<T>>(std::move(value));
        node->value_ = node->held_;
        node->tape_ = this;
        node->tape_alive_ = alive_;
        return node;
    }

    bool recorded_op(const Var<T>& v, const char* caller) const {
        check_same_tape(v, caller);
        return v.node_->position_ >= 0 && v.node_->backward_ != nullptr;
    }

    // n's output as runs of each image's values, given that its input is `blocks` runs of equal
    // length, each within one channel of the layer; 0 where n does not keep that so.
    static index_t blocks_after(const Node<T>& n, index_t blocks) {
        if (blocks == 0 || n.inputs_.size() != 1) return 0;
        const Shape &in = n.inputs_[0]->shape(), &out = n.shape();
        if (in.rank() < 2 || out.rank() < 1 || in[0] != out[0]) return 0;
        switch (n.routing_) {
            case GradientRouting::within_channels:
                return out.rank() >= 2 && in[1] == out[1] && in[1] % blocks == 0 ? blocks : 0;
            case GradientRouting::same_order:
                return blocks;
            case GradientRouting::opaque:
                return 0;
        }
        return 0;
    }

    // Keeps v's value with its node, for a backward or for find().
    static void hold(const Var<T>& v) {
        if (!v.node_->held_) v.node_->held_ = v.value_;
    }

    void append(const std::shared_ptr<Node<T>>& node) {
        node->position_ = static_cast<index_t>(nodes_.size());
        nodes_.push_back(node);
    }

    void check_same_tape(const Var<T>& v, const char* op) const {
        if (!v.node_) throw argument_error(detail::concat(op, ": an operand is an empty Var"));
        if (v.node_->tape_alive_.lock() != alive_)
            throw argument_error(
                detail::concat(op, ": ", v.node_->label(), " belongs to another tape"));
    }

    std::string known_names() const {
        if (name_order_.empty()) return "(none: name values with Tape::name or use nn modules)";
        std::string list;
        for (std::size_t i = 0; i < name_order_.size(); ++i) {
            if (i == 40) return list + ", ... (" + std::to_string(name_order_.size()) + " in all)";
            list += (i ? ", " : "") + name_order_[i];
        }
        return list;
    }

    std::shared_ptr<const bool> alive_ = std::make_shared<const bool>(true);
    std::vector<std::shared_ptr<Node<T>>> nodes_;
    struct Named {
        std::weak_ptr<Node<T>> weak;
        std::shared_ptr<Node<T>> kept;  // set for names asked for with keep()
        bool before_start = false;      // named while recording waited for record_from's layer
        bool fused = false;             // computed inside a fused op, never handed out
    };
    std::vector<std::string> keep_;
    std::unordered_map<std::string, Named> named_;
    std::vector<std::string> name_order_;
    std::string record_from_;
    std::string channel_sums_layer_;
    bool recording_ = true;
    bool parameters_differentiable_ = false;
    bool fusion_while_recording_ = false;
};

// Names `v` on its tape and returns it, for use inside expressions.
template <class T>
Var<T> named(Var<T> v, const std::string& name) {
    v.tape().name(v, name);
    return v;
}

}  // namespace gradcam
