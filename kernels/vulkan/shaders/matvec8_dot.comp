// Matrix-vector for up to 8 tokens, with packed 8-bit integer dot products: matvec.glsl.
#version 450
#define TOKENS 8
#define INTEGER_DOT 1
#include "matvec.glsl"
