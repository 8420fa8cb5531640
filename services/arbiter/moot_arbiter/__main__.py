from moot_arbiter.main import main

main()
