// cuda_sim.cpp — attn.cuda._cuda_sim: the CUDA forward and decode kernels run by the SIMT emulator on CPU
// memory, with the emulator's schedule and cp.async options per call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "../cuda/params.h"
#include "../simt/selftest.h"
#include "../simt/simt.h"
#include "params.h"

namespace py = pybind11;

namespace {

simt::Schedule parse_schedule(const std::string& name) {
  if (name == "warp-first") return simt::Schedule::kWarpFirst;
  if (name == "round-robin") return simt::Schedule::kRoundRobin;
  if (name == "reverse") return simt::Schedule::kReverse;
  if (name == "random") return simt::Schedule::kRandom;
  throw std::invalid_argument("schedule must be 'warp-first', 'round-robin', 'reverse' or 'random', got '" + name +
                              "'");
}

simt::CpAsyncLanding parse_cp_async(const std::string& name) {
  if (name == "issue") return simt::CpAsyncLanding::kAtIssue;
  if (name == "wait") return simt::CpAsyncLanding::kAtWait;
  throw std::invalid_argument("cp_async must be 'issue' or 'wait', got '" + name + "'");
}

}  // namespace

PYBIND11_MODULE(_cuda_sim, m) {
  m.doc() =
      "The CUDA forward kernel compiled for the host and executed by the SIMT emulator (csrc/simt) on CPU memory";
  m.def(
      "configure",
      [](const std::string& schedule, uint64_t seed, const std::string& cp_async, int os_threads, size_t stack_bytes,
         bool racecheck) {
        simt::Options& o = simt::options();
        o.schedule = parse_schedule(schedule);
        o.seed = seed;
        o.cp_async = parse_cp_async(cp_async);
        o.os_threads = os_threads;
        o.stack_bytes = stack_bytes;
        o.racecheck = racecheck;
      },
      "Sets the emulator's options for the following launches.", py::arg("schedule") = "warp-first",
      py::arg("seed") = 0, py::arg("cp_async") = "issue", py::arg("os_threads") = 1,
      py::arg("stack_bytes") = 64 * 1024, py::arg("racecheck") = true);
  m.def("options", [] {
    static const char* kSchedules[] = {"warp-first", "round-robin", "reverse", "random"};
    const simt::Options& o = simt::options();
    return py::make_tuple(kSchedules[static_cast<int>(o.schedule)], o.seed,
                          o.cp_async == simt::CpAsyncLanding::kAtIssue ? "issue" : "wait", o.os_threads,
                          o.stack_bytes, o.racecheck);
  }, "The current options, in configure()'s argument order.");
  m.def("stats", [] {
    const simt::Stats s = simt::stats();
    py::dict d;
    d["blocks"] = s.blocks;
    d["mma"] = s.mma;
    d["ldmatrix"] = s.ldmatrix;
    d["shuffles"] = s.shuffles;
    d["block_barriers"] = s.block_barriers;
    d["switches"] = s.switches;
    d["cp_async_bytes"] = s.cp_async_bytes;
    return d;
  });
  m.def("reset_stats", &simt::reset_stats);
  attn::bind_cuda_params(m);
  attn::bind_cuda_shapes(m);
  m.def(
      "forward", [](const attn::FwdParams& p) { attn::run_fwd(p, nullptr); }, py::arg("params"),
      py::call_guard<py::gil_scoped_release>(), "Attention forward into params.out / params.lse");
  m.def(
      "decode", [](const attn::DecodeParams& p) { attn::run_decode(p, nullptr); }, py::arg("params"),
      py::call_guard<py::gil_scoped_release>(), "Split-KV decode into params.out / params.lse");
  py::register_exception<simt::Error>(m, "EmulatorError", PyExc_RuntimeError);
  py::module_ selftest = m.def_submodule("selftest", "Small kernels that check the emulator itself");
  simt::selftest::register_kernels(selftest);
}
