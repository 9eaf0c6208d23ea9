#include <cstdio>

int main(int argc, char** argv) {
  std::puts("xyserve");
  return 0;
}
