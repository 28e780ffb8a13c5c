from repofs.cli import main

main()
