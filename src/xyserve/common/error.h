// Errors at the boundaries (files, network, user input). An Error's message is for a person:
// it names the file, field or tensor, and what was expected against what was found.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace xy {

// Concatenates its arguments with operator<< (g++ 12 has no std::format).
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A model directory that cannot be loaded: missing or malformed file, field, or tensor.
class ModelError : public Error {
 public:
  using Error::Error;
};

// Input from a user (a request, a flag) that cannot be served as given.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

}  // namespace xy
