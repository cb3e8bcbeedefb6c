# Dependencies of a kernels-only build (HEARTH_KERNELS_ONLY=ON), made without any library built
# for the target, so that a cross build needs nothing but the cross compiler and the host's
# -dev packages:
#  - fmt as a header-only library (FMT_HEADER_ONLY) from the host's /usr/include/fmt,
#  - nlohmann_json's headers from the host's /usr/include/nlohmann (the kernel tests read JSON
#    fixtures),
#  - GoogleTest compiled for the target from the sources libgtest-dev ships (/usr/src/googletest).
# Those headers are architecture independent; only their directories are exposed (through
# symlinks in the build tree), never the host's /usr/include itself, whose C library headers
# belong to the host architecture.

set(HEARTH_HOST_INCLUDE_DIR /usr/include CACHE PATH "Where the host's fmt/ and nlohmann/ headers are")
set(HEARTH_GTEST_SOURCE_DIR /usr/src/googletest CACHE PATH "GoogleTest sources (libgtest-dev)")

set(_hearth_headers ${PROJECT_BINARY_DIR}/kernels-only-include)
file(MAKE_DIRECTORY ${_hearth_headers})
foreach(_dir fmt nlohmann)
  if(NOT EXISTS ${HEARTH_HOST_INCLUDE_DIR}/${_dir})
    message(FATAL_ERROR "kernels-only build: ${HEARTH_HOST_INCLUDE_DIR}/${_dir} not found (scripts/setup.sh installs it)")
  endif()
  file(CREATE_LINK ${HEARTH_HOST_INCLUDE_DIR}/${_dir} ${_hearth_headers}/${_dir} SYMBOLIC)
endforeach()

add_library(hearth_fmt_header_only INTERFACE)
target_include_directories(hearth_fmt_header_only SYSTEM INTERFACE ${_hearth_headers})
target_compile_definitions(hearth_fmt_header_only INTERFACE FMT_HEADER_ONLY=1)
add_library(fmt::fmt ALIAS hearth_fmt_header_only)

add_library(hearth_json_headers INTERFACE)
target_include_directories(hearth_json_headers SYSTEM INTERFACE ${_hearth_headers})
add_library(nlohmann_json::nlohmann_json ALIAS hearth_json_headers)

if(HEARTH_BUILD_TESTS)
  if(NOT EXISTS ${HEARTH_GTEST_SOURCE_DIR}/CMakeLists.txt)
    message(FATAL_ERROR "kernels-only build: GoogleTest sources not found in ${HEARTH_GTEST_SOURCE_DIR}")
  endif()
  set(BUILD_GMOCK OFF CACHE BOOL "" FORCE)
  set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
  add_subdirectory(${HEARTH_GTEST_SOURCE_DIR} ${PROJECT_BINARY_DIR}/googletest EXCLUDE_FROM_ALL SYSTEM)
  if(NOT TARGET GTest::gtest_main)
    add_library(GTest::gtest_main ALIAS gtest_main)
  endif()
endif()
