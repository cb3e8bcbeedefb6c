# Run at build time (cmake -P): writes the build-info header with the current git commit, only
# when its content changes, so `hearth --version` / `hearth bench` never report a stale commit.
# Inputs: SOURCE_DIR, INPUT, OUTPUT and the configure-time values used by the template.
execute_process(COMMAND git rev-parse --short=12 HEAD
                WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE HEARTH_GIT_COMMIT OUTPUT_STRIP_TRAILING_WHITESPACE
                ERROR_QUIET)
if(NOT HEARTH_GIT_COMMIT)
  set(HEARTH_GIT_COMMIT "unknown")
endif()
execute_process(COMMAND git diff --quiet HEAD WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE _dirty ERROR_QUIET)
if(_dirty EQUAL 1)
  set(HEARTH_GIT_COMMIT "${HEARTH_GIT_COMMIT}-dirty")
endif()
configure_file(${INPUT} ${OUTPUT} @ONLY)
