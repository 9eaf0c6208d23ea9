// The subcommands of the xyserve binary. Each takes its arguments after the subcommand name and
// returns the process exit code; errors are thrown as xy::Error and reported by main.
#pragma once

#include <string>
#include <vector>

namespace xy::cli {

int run_generate(const std::vector<std::string>& args);
int run_make_model(const std::vector<std::string>& args);
int run_serve(const std::vector<std::string>& args);
int run_bench(const std::vector<std::string>& args);        // offline | serve
int run_bench_serve(const std::vector<std::string>& args);  // after `bench serve`
int run_tune(const std::vector<std::string>& args);

}  // namespace xy::cli
