// Registers BM_sparse_learned_gate_<dtype>/... (one translation unit per selector).
#include "bench_common.hpp"

namespace bench {

void register_sparse_learned_gate(const std::string& act) {
  if (act == "relu") {
    register_sparse<sf::select::learned_gate, float, sf::act::relu>("learned_gate", "f32");
    register_sparse<sf::select::learned_gate, sf::bfloat16_t, sf::act::relu>("learned_gate", "bf16");
    register_sparse<sf::select::learned_gate, sf::half_t, sf::act::relu>("learned_gate", "f16");
  } else {
    register_sparse<sf::select::learned_gate, float, sf::act::silu>("learned_gate", "f32");
    register_sparse<sf::select::learned_gate, sf::bfloat16_t, sf::act::silu>("learned_gate", "bf16");
    register_sparse<sf::select::learned_gate, sf::half_t, sf::act::silu>("learned_gate", "f16");
  }
}

}  // namespace bench
