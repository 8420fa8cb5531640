from moot_gateway.main import main

main()
