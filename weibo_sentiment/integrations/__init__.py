"""What connects this project to other systems: BettaFish's sentiment analyzer, and trends over a crawl."""
