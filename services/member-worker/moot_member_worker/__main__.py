from moot_member_worker.main import main

main()
