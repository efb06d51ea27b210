# The README's usage example is examples/quickstart.cpp, verbatim: this fails when they differ,
# so the code a reader copies is the code that is compiled and run.
file(READ "${SOURCE_DIR}/README.md" readme)
file(READ "${SOURCE_DIR}/examples/quickstart.cpp" code)
string(FIND "${readme}" "${code}" position)
if(position EQUAL -1)
  message(FATAL_ERROR "README.md does not contain examples/quickstart.cpp verbatim")
endif()
