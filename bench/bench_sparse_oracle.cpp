// Registers BM_sparse_oracle_<dtype>/... (one translation unit per selector).
#include "bench_common.hpp"

namespace bench {

void register_sparse_oracle(const std::string& act) {
  if (act == "relu") {
    register_sparse<sf::select::oracle, float, sf::act::relu>("oracle", "f32");
    register_sparse<sf::select::oracle, sf::bfloat16_t, sf::act::relu>("oracle", "bf16");
    register_sparse<sf::select::oracle, sf::half_t, sf::act::relu>("oracle", "f16");
  } else {
    register_sparse<sf::select::oracle, float, sf::act::silu>("oracle", "f32");
    register_sparse<sf::select::oracle, sf::bfloat16_t, sf::act::silu>("oracle", "bf16");
    register_sparse<sf::select::oracle, sf::half_t, sf::act::silu>("oracle", "f16");
  }
}

}  // namespace bench
