// A small C ABI over PyTorch's c10d (the runtime under torch.distributed), for Rust.
//
// Everything here is plain c10d: a TCPStore for the rendezvous (wrapped in a PrefixStore),
// ProcessGroupGloo on CPU and, when built with QOQ_WITH_NCCL, ProcessGroupNCCL on CUDA.
// Every call catches C++ exceptions and hands the message back through `err` (a malloc'ed
// string the caller frees with qoq_dist_free_string), so nothing unwinds into Rust.

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef QOQ_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

// Runs f, turning any exception into a message in *err and a non-zero return.
template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_string(e.what());
  } catch (...) {
    *err = copy_string("unknown C++ exception");
  }
  return 1;
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default:
      throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

// The backend, or an error once qoq_dist_close_backend has closed it.
c10d::Backend& backend_of(const Group* g) {
  if (!g->backend) {
    throw std::runtime_error("this group's collectives were closed after an earlier failure");
  }
  return *g->backend;
}

// Waits for a collective; the backend's own timeout also applies inside it.
void finish(const Group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(g->timeout)) {
    throw std::runtime_error("timed out after " + std::to_string(g->timeout.count()) + " ms");
  }
}

}  // namespace

extern "C" {

// backend: 0 = Gloo (CPU tensors), 1 = NCCL (CUDA tensors). agent_store: connect to a store
// someone else serves (torchrun's agent) instead of rank 0 serving it.
void* qoq_dist_new(const char* host, int port, int rank, int size, int backend, int64_t timeout_ms,
                   int agent_store, const char* prefix, char** err) {
  Group* group = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0 && agent_store == 0;
    opts.numWorkers = static_cast<std::size_t>(size);
    opts.waitWorkers = agent_store == 0;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == 0) {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // Loopback when everyone is on this machine; otherwise the interface that reaches
      // the master (Gloo picks it by resolving this host's name).
      std::string h(host);
      if (h == "127.0.0.1" || h == "localhost") {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(h));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
    } else {
#ifdef QOQ_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
#else
      throw std::runtime_error("this build has no NCCL: rebuild with the `cuda` feature (tools/setup-cuda.sh)");
#endif
    }
    group = new Group{store, pg, timeout};
  });
  return group;
}

void qoq_dist_free(void* g) { delete static_cast<Group*>(g); }

void qoq_dist_free_string(char* s) { std::free(s); }

// Drops the backend (its connections close, so peers blocked on this rank fail now rather
// than at their timeout) and keeps the store, which the failure census still reads.
void qoq_dist_close_backend(void* g) { static_cast<Group*>(g)->backend.reset(); }

int qoq_dist_all_reduce(void* g, at::Tensor* t, int op, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    std::vector<at::Tensor> tensors{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = group->timeout;
    finish(group, backend_of(group).allreduce(tensors, opts));
  });
}

// output: world_size x numel(input) elements, rank r's part at [r * numel, (r + 1) * numel).
int qoq_dist_all_gather(void* g, at::Tensor* output, at::Tensor* input, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    c10d::AllgatherOptions opts;
    opts.timeout = group->timeout;
    finish(group, backend_of(group)._allgather_base(*output, *input, opts));
  });
}

// input: world_size x numel(output) elements; rank r receives the reduction of part r.
int qoq_dist_reduce_scatter(void* g, at::Tensor* output, at::Tensor* input, int op, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = group->timeout;
    finish(group, backend_of(group)._reduce_scatter_base(*output, *input, opts));
  });
}

// Rank `root` receives every rank's input in `output` (world_size x numel(input) elements,
// rank r's part at [r * numel, (r + 1) * numel)); the other ranks pass output = nullptr.
int qoq_dist_gather(void* g, at::Tensor* output, at::Tensor* input, int root, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    std::vector<std::vector<at::Tensor>> outputs;
    if (output != nullptr) {
      outputs.push_back(output->chunk(backend_of(group).getSize()));
    }
    std::vector<at::Tensor> inputs{*input};
    c10d::GatherOptions opts;
    opts.rootRank = root;
    opts.timeout = group->timeout;
    finish(group, backend_of(group).gather(outputs, inputs, opts));
  });
}

int qoq_dist_broadcast(void* g, at::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = group->timeout;
    finish(group, backend_of(group).broadcast(tensors, opts));
  });
}

int qoq_dist_barrier(void* g, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    c10d::BarrierOptions opts;
    opts.timeout = group->timeout;
    finish(group, backend_of(group).barrier(opts));
  });
}

int qoq_dist_store_set(void* g, const char* key, const uint8_t* value, size_t len, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    group->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
  });
}

// *present = 1 when the key exists (does not wait).
int qoq_dist_store_check(void* g, const char* key, int* present, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    *present = group->store->check({std::string(key)}) ? 1 : 0;
  });
}

// The value of a key that exists (check first): *value is malloc'ed, free it with
// qoq_dist_free_string.
int qoq_dist_store_get(void* g, const char* key, uint8_t** value, size_t* len, char** err) {
  return guarded(err, [&] {
    auto group = static_cast<Group*>(g);
    auto v = group->store->get(std::string(key));
    *value = static_cast<uint8_t*>(std::malloc(v.size() + 1));
    if (*value == nullptr) {
      throw std::bad_alloc();
    }
    std::memcpy(*value, v.data(), v.size());
    *len = v.size();
  });
}

}  // extern "C"
