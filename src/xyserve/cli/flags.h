// Command-line flags of one subcommand: declared once with their help text, parsed from argv,
// and printed by --help. Unknown flags, missing values and malformed numbers are errors that
// name the flag.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace xy::cli {

class FlagSet {
 public:
  FlagSet(std::string command, std::string summary);

  // Declares a flag taking a value (`--name VALUE` or `--name=VALUE`) with a default ("" for none).
  void add(const std::string& name, const std::string& value_name, const std::string& default_value,
           const std::string& help);
  // Declares a boolean flag (`--name`); `--no-name` turns it off where `negatable`.
  void add_bool(const std::string& name, bool default_value, const std::string& help,
                bool negatable = false);

  // Parses args (after the subcommand). Throws xy::InvalidArgument on a bad flag.
  void parse(const std::vector<std::string>& args);

  bool help_requested() const { return help_; }
  std::string help() const;

  bool has(const std::string& name) const;  // given on the command line or with a default
  std::string get(const std::string& name) const;
  std::string require(const std::string& name) const;  // throws when absent
  int64_t get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  bool get_bool(const std::string& name) const;
  std::optional<int64_t> get_optional_int(const std::string& name) const;

 private:
  struct Flag {
    std::string value_name;
    std::string default_value;
    std::string help;
    bool is_bool = false;
    bool negatable = false;
  };
  const Flag& flag(const std::string& name) const;

  std::string command_;
  std::string summary_;
  std::vector<std::string> order_;
  std::map<std::string, Flag> flags_;
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

}  // namespace xy::cli
