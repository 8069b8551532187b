# cmake -P check.cmake, run by ctest: another CMake project uses libledger, in a temp dir removed
# afterwards, with this build's compiler and sanitizer flags.
#   MODE=build_tree     configure, build and run tests/consumer against LEDGER_BUILD_DIR's export
#   MODE=subdirectory   configure tests/consumer with the ledger sources as a subdirectory: only
#                       libledger is configured, and libcurl, OpenSSL and libpq are not even looked for
# Inputs: MODE, CONSUMER_SOURCE_DIR, LEDGER_BUILD_DIR, LEDGER_SOURCE_DIR, GENERATOR, CXX_COMPILER,
# CXX_FLAGS.
if(DEFINED ENV{TMPDIR} AND IS_DIRECTORY "$ENV{TMPDIR}")
  set(tmp "$ENV{TMPDIR}")
else()
  set(tmp /tmp)
endif()
string(RANDOM LENGTH 10 suffix)
set(work "${tmp}/ledger-consumer-${suffix}")
file(MAKE_DIRECTORY "${work}/ledger")

function(step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    file(REMOVE_RECURSE "${work}")
    message(FATAL_ERROR "consumer (${MODE}): ${what} failed (${rc})")
  endif()
endfunction()

set(configure ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${work}/build" -G "${GENERATOR}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
if(MODE STREQUAL "build_tree")
  step("configure" ${configure} "-Dledger_DIR=${LEDGER_BUILD_DIR}")
  step("build" ${CMAKE_COMMAND} --build "${work}/build")
  step("run" "${work}/build/consumer" "${work}/ledger")
elseif(MODE STREQUAL "subdirectory")
  step("configure" ${configure} "-DLEDGER_SOURCE_DIR=${LEDGER_SOURCE_DIR}" -DCMAKE_DISABLE_FIND_PACKAGE_CURL=ON
       -DCMAKE_DISABLE_FIND_PACKAGE_OpenSSL=ON -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON -DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON)
else()
  message(FATAL_ERROR "MODE must be build_tree or subdirectory")
endif()
file(REMOVE_RECURSE "${work}")
