#include "xyserve/cli/flags.h"

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "xyserve/common/error.h"

namespace xy::cli {

FlagSet::FlagSet(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void FlagSet::add(const std::string& name, const std::string& value_name,
                  const std::string& default_value, const std::string& help) {
  order_.push_back(name);
  flags_[name] = Flag{value_name, default_value, help, false, false};
}

void FlagSet::add_bool(const std::string& name, bool default_value, const std::string& help,
                       bool negatable) {
  order_.push_back(name);
  flags_[name] = Flag{"", default_value ? "true" : "false", help, true, negatable};
}

const FlagSet::Flag& FlagSet::flag(const std::string& name) const {
  auto it = flags_.find(name);
  if (it == flags_.end()) throw Error(cat("internal: flag --", name, " was never declared"));
  return it->second;
}

void FlagSet::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h" || arg == "--help") {
      help_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0)
      throw InvalidArgument(cat(command_, ": unexpected argument '", arg, "' (flags start with --)"));
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = flags_.find(name);
    if (it == flags_.end() && name.rfind("no-", 0) == 0) {
      auto positive = flags_.find(name.substr(3));
      if (positive != flags_.end() && positive->second.is_bool && positive->second.negatable) {
        if (value) throw InvalidArgument(cat(command_, ": --", name, " takes no value"));
        values_[positive->first] = "false";
        continue;
      }
    }
    if (it == flags_.end())
      throw InvalidArgument(cat(command_, ": unknown flag --", name, " (see ", command_, " --help)"));
    if (it->second.is_bool) {
      if (value && *value != "true" && *value != "false")
        throw InvalidArgument(cat(command_, ": --", name, " expects true or false, got '", *value, "'"));
      values_[name] = value.value_or("true");
      continue;
    }
    if (!value) {
      if (i + 1 >= args.size())
        throw InvalidArgument(cat(command_, ": --", name, " needs a value (", it->second.value_name, ")"));
      value = args[++i];
    }
    values_[name] = *value;
  }
}

bool FlagSet::has(const std::string& name) const {
  return values_.count(name) || !flag(name).default_value.empty();
}

std::string FlagSet::get(const std::string& name) const {
  auto it = values_.find(name);
  return it != values_.end() ? it->second : flag(name).default_value;
}

std::string FlagSet::require(const std::string& name) const {
  if (!has(name)) throw InvalidArgument(cat(command_, ": --", name, " is required"));
  return get(name);
}

int64_t FlagSet::get_int(const std::string& name) const {
  const std::string s = require(name);
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno || end == s.c_str() || *end != '\0')
    throw InvalidArgument(cat(command_, ": --", name, " expects an integer, got '", s, "'"));
  return v;
}

std::optional<int64_t> FlagSet::get_optional_int(const std::string& name) const {
  if (!has(name)) return std::nullopt;
  return get_int(name);
}

double FlagSet::get_double(const std::string& name) const {
  const std::string s = require(name);
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (errno || end == s.c_str() || *end != '\0')
    throw InvalidArgument(cat(command_, ": --", name, " expects a number, got '", s, "'"));
  return v;
}

bool FlagSet::get_bool(const std::string& name) const { return get(name) == "true"; }

std::string FlagSet::help() const {
  std::ostringstream out;
  out << "usage: xyserve " << command_ << " [flags]\n\n" << summary_ << "\n\nflags:\n";
  for (const auto& name : order_) {
    const Flag& f = flags_.at(name);
    std::string left = "  --" + name;
    if (!f.is_bool) left += " " + f.value_name;
    if (f.negatable) left += " | --no-" + name;
    out << left;
    if (left.size() < 34) out << std::string(34 - left.size(), ' ');
    else out << "\n" << std::string(34, ' ');
    out << f.help;
    if (!f.is_bool && !f.default_value.empty()) out << " (default: " << f.default_value << ")";
    if (f.is_bool && f.default_value == "true") out << " (default: on)";
    out << "\n";
  }
  out << "  -h, --help                      show this help\n";
  return out.str();
}

}  // namespace xy::cli
